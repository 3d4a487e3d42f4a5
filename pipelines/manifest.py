"""Stage manifests: each stage writes `artifacts/<stage>/manifest.json` (inputs with content hashes,
settings, outputs, metrics); the next stage reads the manifest, not guesses about file names."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from recipes.errors import LatheError

ARTIFACTS = Path("artifacts")


def stage_dir(stage: str, root: Path = ARTIFACTS) -> Path:
    path = root / stage
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_manifest(directory: Path, *, stage: str, inputs: dict[str, Any], settings: dict[str, Any],
                   outputs: dict[str, Any], metrics: dict[str, Any] | None = None) -> Path:
    manifest = {"stage": stage, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "inputs": inputs, "settings": settings, "outputs": outputs, "metrics": metrics or {}}
    path = Path(directory) / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(stage: str, root: Path = ARTIFACTS) -> dict[str, Any]:
    path = root / stage / "manifest.json"
    if not path.exists():
        raise LatheError(f"{path} not found: run the '{stage}' stage first (`lathe {stage}` or `dvc repro {stage}`)")
    return json.loads(path.read_text())
