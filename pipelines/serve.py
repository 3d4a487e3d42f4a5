"""`lathe serve`: serve the registry's champion (or any model) with the OpenAI-compatible API.

    lathe serve                                   # champion of the recipe's registered model
    lathe serve --model models:/lathe-default@candidate --port 8001
    lathe serve --model artifacts/preference/model
"""

from __future__ import annotations

from recipes.schema import Recipe


def main(recipe: Recipe, args) -> int:
    from registry import models
    from serving.app import run
    from serving.settings import ServerSettings

    cfg = recipe.serve
    ref = args.model or cfg.model
    model_dir = models.resolve(ref, default_name=recipe.registry.model_name)
    name = ref if ref.startswith("models:/") or ref in ("champion", "candidate") else model_dir.name
    if ref in ("champion", "candidate"):
        name = recipe.registry.model_name
    settings = ServerSettings(model_dir=model_dir, model_name=name, host=args.host or cfg.host,
                              port=args.port or cfg.port, max_queue=cfg.max_queue, torch_threads=cfg.torch_threads)
    run(settings)
    return 0
