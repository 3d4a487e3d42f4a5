"""Stage `promote`: the quality gate. Moves alias `champion` to the candidate when it wins.

    lathe promote --recipe params.yaml
    lathe promote --force --reason "hotfix approved by …"
    lathe rollback

The decision (every check with its numbers) is printed and written to artifacts/promote/decision.json.
A refused candidate is a result, not an error: the stage succeeds and the champion stays.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.manifest import stage_dir
from recipes.errors import LatheError
from recipes.schema import Recipe


def candidate_version(recipe: Recipe, root: Path) -> str:
    path = root / "register" / "manifest.json"
    if path.exists():
        return json.loads(path.read_text())["version"]
    from registry import models

    info = models.get_version(recipe.registry.model_name, "candidate")
    if info is None:
        raise LatheError(f"no candidate to promote: {path} is missing and model '{recipe.registry.model_name}' has no "
                         f"'candidate' alias. Run `lathe register` first")
    return str(info.version)


def main(recipe: Recipe, args, root: Path = Path("artifacts")) -> int:
    from registry import promotion, tracking

    if args.force and not args.reason:
        raise LatheError("--force needs --reason \"...\" (it is recorded on the model version)")
    version = args.version or candidate_version(recipe, root)
    out = stage_dir("promote", root) / "decision.json"
    with tracking.stage_run("promote", experiment=recipe.registry.experiment):
        decision = promotion.promote(recipe.registry.model_name, version, recipe.gate, force=args.force,
                                     reason=args.reason, out_json=out)
    verdict = "PROMOTED to champion" if decision.promote else "NOT promoted (champion unchanged)"
    print(f"promote: {recipe.registry.model_name} version {version}: {verdict}")
    for check in decision.checks:
        print(f"  [{'ok' if check.passed else 'FAIL'}] {check.name}: {check.detail}")
    return 0


def rollback(recipe: Recipe, args) -> int:
    from registry import promotion

    version = promotion.rollback(recipe.registry.model_name)
    print(f"rollback: {recipe.registry.model_name} champion → version {version}")
    return 0
