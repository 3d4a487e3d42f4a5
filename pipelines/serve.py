"""`lathe serve`: serve the registry's champion (or any model) with the OpenAI-compatible API.

    lathe serve                                   # champion of the recipe's registered model
    lathe serve --model models:/lathe-default@candidate --port 8001
    lathe serve --model artifacts/preference/model

Served from an alias (champion, candidate, models:/name@alias), the server follows it: when the alias
moves it loads the new version and switches without dropping requests in flight.
"""

from __future__ import annotations

from pathlib import Path

from recipes.schema import Recipe

ALIASES = ("champion", "candidate")


def main(recipe: Recipe, args) -> int:
    from registry import models
    from serving.app import run
    from serving.settings import ServerSettings

    cfg = recipe.serve
    ref = args.model or cfg.model
    model_dir = models.resolve(ref, default_name=recipe.registry.model_name)
    follows_registry = ref in ALIASES or (ref.startswith("models:/") and "@" in ref)
    if ref in ALIASES:
        name = recipe.registry.model_name
    elif ref.startswith("models:/"):
        name = ref.removeprefix("models:/").split("@")[0].split("/")[0]
    else:
        name = Path(model_dir).name
    settings = ServerSettings(
        model_dir=model_dir, model_name=name, host=args.host or cfg.host, port=args.port or cfg.port,
        model_ref=ref if follows_registry else None,
        registry_model_name=recipe.registry.model_name if follows_registry else None,
        watch_interval_s=cfg.watch_interval_s, engine=cfg.engine, max_queue=cfg.max_queue,
        torch_threads=cfg.torch_threads, drain_timeout_s=cfg.drain_timeout_s, platform=recipe.platform)
    planes = []
    if cfg.fine_tuning.enabled:  # the fine-tuning jobs plane (jobs/), off unless the recipe turns it on
        from jobs.plane import JobsPlane

        planes.append(JobsPlane(cfg.fine_tuning))
    run(settings, planes)
    return 0
