"""Stage `register`: register the tuned model in MLflow as a new version with alias `candidate`.

    lathe register --recipe params.yaml

The version carries its eval metrics (the gate reads them back), lineage tags (recipe, base model,
data hashes, git commit) and a generated model card. Registering identical inputs again returns
the existing version instead of a duplicate.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.manifest import read_manifest, stage_dir
from recipes.schema import Recipe
from recipes.stages import TRAINING


def run_register(recipe: Recipe, root: Path = Path("artifacts")) -> dict:
    from registry import card, models, tracking

    tuned = read_manifest("rl", root)["outputs"]  # the last training stage: a skipped one passes its input on
    evaluation = read_manifest("evaluate", root)
    data = read_manifest("data", root)
    base = read_manifest("base", root)
    metrics = evaluation["metrics"]["tuned"]
    tags = {"lathe.recipe": recipe.name, "lathe.base_model": recipe.model.id,
            "lathe.base_revision": str(recipe.model.revision), "lathe.base_hash": base["outputs"]["model_hash"],
            "lathe.data_hashes": json.dumps({k: v["sha256"] for k, v in data["outputs"].items()}, sort_keys=True),
            **tracking.lineage_tags(Path.cwd())}
    card_text = card.model_card(recipe.registry.model_name, recipe=recipe.model_dump(mode="json"), metrics=metrics,
                                data_manifest=data)
    stack = adapter_stack(recipe, root)
    info = models.register(recipe.registry.model_name, Path(tuned["model_dir"]), metrics=metrics, tags=tags,
                           card_text=card_text, stack=stack)
    out = stage_dir("register", root)
    manifest = {"name": info.name, "version": str(info.version), "model_dir": tuned["model_dir"], "metrics": metrics,
                "stored_as": ("adapters " + " → ".join(stage for stage, _ in stack.adapters) + " on "
                              + info.tags[models.BASE_TAG]) if stack else "full weights"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def adapter_stack(recipe: Recipe, root: Path):
    """The tuned model as LoRA adapters on full weights: each training stage that ran with LoRA/QLoRA adds its
    adapter (trained on the previous stage's merge); a full fine-tune restarts the stack on its own weights.
    None when no adapter is left to store (nothing trained, or the last stage trained all weights)."""
    from registry.stack import AdapterStack

    base_dir, adapters = Path(read_manifest("base", root)["outputs"]["model_dir"]), []
    for stage in TRAINING:
        outputs = read_manifest(stage, root)["outputs"]
        if outputs.get("skipped"):
            continue
        if "adapter_dir" in outputs:
            adapters.append((stage, Path(outputs["adapter_dir"])))
        else:
            base_dir, adapters = Path(outputs["model_dir"]), []
    return AdapterStack(base_dir, adapters, recipe.model.dtype) if adapters else None


def main(recipe: Recipe, args) -> int:
    from registry import tracking

    with tracking.stage_run("register", experiment=recipe.registry.experiment):
        manifest = run_register(recipe)
    print(f"register: {manifest['name']} version {manifest['version']} → alias candidate (stored as "
          f"{manifest['stored_as']})")
    return 0
