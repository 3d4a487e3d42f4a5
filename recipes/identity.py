"""The one content identity of a model directory and of a file, shared by every room that names a model:
the stage manifests (pipelines/), the evaluation cache (eval/) and the registry's versions (registry/) all
record `model_hash`, so a model evaluated, registered and served can be joined on one digest.

Only what changes what the model computes counts: weights, configs, tokenizer, chat template, adapters (in
sub-folders too). Documentation and the registry's own additions (README.md, MODEL_CARD.md, MLmodel, a stage
manifest) and hidden files (.gitattributes, caches) are left out, so registering a folder does not change
its identity.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

NOT_MODEL_CONTENT = frozenset({"README.md", "manifest.json", "MODEL_CARD.md", "MLmodel"})


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_hash(model_dir: str | Path) -> str:
    """sha256 over `relative/path\\0sha256(file)` of every model file under `model_dir`, in sorted order."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(model_dir.rglob("*")):
        relative = path.relative_to(model_dir)
        if (path.is_file() and path.name not in NOT_MODEL_CONTENT
                and not any(part.startswith(".") for part in relative.parts)):
            digest.update(f"{relative.as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()
