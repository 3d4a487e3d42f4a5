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
from recipes.serve_schema import ServerTuning

ALIASES = ("champion", "candidate")


def main(recipe: Recipe, args) -> int:
    from registry import models
    from serving.app import run

    ref = args.model or recipe.serve.model
    model_dir = models.resolve(ref, default_name=recipe.registry.model_name)
    planes = []
    if recipe.serve.fine_tuning.enabled:  # the fine-tuning jobs plane (jobs/), off unless the recipe turns it on
        from jobs.plane import JobsPlane

        planes.append(JobsPlane(recipe.serve.fine_tuning))
    run(server_settings(recipe, ref, Path(model_dir), host=args.host, port=args.port), planes)
    return 0


def server_settings(recipe: Recipe, ref: str, model_dir: Path, host: str | None = None, port: int | None = None,
                    served_name: str | None = None):
    """The server's settings: every knob of the recipe's `serve:` as set, `LATHE_SERVE_<KNOB>` variables over them,
    the command line's host and port over both (serving/settings.py), and the served name and registry reference
    from `ref` (`served_name` overrides the name)."""
    from serving.settings import layered

    follows_registry = ref in ALIASES or (ref.startswith("models:/") and "@" in ref)
    return layered(recipe.serve.model_dump(include=set(ServerTuning.model_fields)), {"host": host, "port": port},
                   model_dir=model_dir, model_name=served_name or served_model_name(ref, recipe, model_dir),
                   model_ref=ref if follows_registry else None,
                   registry_model_name=recipe.registry.model_name if follows_registry else None,
                   platform=recipe.platform)


def served_model_name(ref: str, recipe: Recipe, model_dir: Path) -> str:
    """The `model` clients pass: the registered name for an alias or models:/ reference, else the directory's name."""
    if ref in ALIASES:
        return recipe.registry.model_name
    if ref.startswith("models:/"):
        return ref.removeprefix("models:/").split("@")[0].split("/")[0]
    return Path(model_dir).name
