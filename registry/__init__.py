"""Registry: WHERE models live. MLflow tracking (tracking.py), registered versions and aliases
(models.py), the promotion policy as a pure function (gate.py), alias moves (promotion.py) and
the model card (card.py). Imports recipes/ only; MLflow is imported lazily inside functions."""
