"""The pipeline's stages, in dvc.yaml's order: the one list the CLI, the evaluate and register stages and the
fine-tuning jobs plane read (tests/recipes/test_stages.py checks dvc.yaml against it)."""

CHAIN = ("base", "data", "sft", "preference", "rl", "evaluate", "register", "promote")
TRAINING = ("sft", "preference", "rl")
"""The training stages, in order: each trains on the previous one's merged model."""
JOB_STAGES = tuple(s for s in CHAIN if s not in ("data", "promote"))
"""What a fine-tuning job runs after validating its files with `data`: the job's model is served as an
adapter by the job's server, not promoted."""
