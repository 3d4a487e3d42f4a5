"""Content hashes (model, data, task configs) and the evaluation cache keyed by them.

A suite's result is reused only when the model files, the data files, the task configs, the library
versions and every setting that changes a score are the same; the key is a hash of all of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from recipes.identity import file_sha256


def tree_sha256(paths: list[Path]) -> str:
    """One hash over several files (e.g. the task YAMLs and their Python helpers)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def settings_key(model_sha: str, request: dict) -> str:
    payload = json.dumps({"model": model_sha, "request": request}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class EvalCache:
    """`<cache_dir>/<model hash>/<suite>-<key>.json` (the suite entry) + `.samples.jsonl`."""

    def __init__(self, cache_dir: str | Path):
        self.root = Path(cache_dir)

    def _paths(self, model_sha: str, suite: str, key: str) -> tuple[Path, Path]:
        base = self.root / model_sha[:16] / f"{suite}-{key[:24]}"
        return base.with_suffix(".json"), base.with_suffix(".samples.jsonl")

    def get(self, model_sha: str, suite: str, key: str, samples_out: Path) -> dict | None:
        entry_path, samples_path = self._paths(model_sha, suite, key)
        if not (entry_path.is_file() and samples_path.is_file()):
            return None
        record = json.loads(entry_path.read_text())
        if record.get("key") != key:
            return None
        samples_out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(samples_path, samples_out)
        return record["entry"]

    def put(self, model_sha: str, suite: str, key: str, entry: dict, samples_file: Path) -> None:
        entry_path, samples_path = self._paths(model_sha, suite, key)
        entry_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_copy(samples_file, samples_path)
        atomic_write(entry_path, json.dumps({"key": key, "entry": entry}, indent=1, default=str))


def atomic_write(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of it."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
