"""Fixtures for the eval tests: one small run of every suite on the tiny model, shared by the tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from recipes.schema import SuiteConfig

# Nothing in these tests may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SKILL_ROWS = [
    {"skill": "upper", "prompt": "Say HI", "answer": "HI"},
    {"skill": "sum", "prompt": "What is 2+2?", "answer": "4"},
    {"skill": "list", "prompt": "Give [1, 2]", "answer": "[1, 2]"},
]

ALL_SUITES = [
    SuiteConfig(name="skills"),
    SuiteConfig(name="mmlu", subjects=["anatomy", "college_mathematics"], limit=2),
    SuiteConfig(name="gsm8k", limit=2, max_gen_toks=24),
    SuiteConfig(name="hellaswag", limit=3),
    SuiteConfig(name="humaneval", limit=2, max_gen_toks=24),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def skills_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("skills") / "skills_eval.jsonl", SKILL_ROWS)


@pytest.fixture(scope="session")
def full_run(tiny_model_dir, shared_data, skills_file, tmp_path_factory) -> dict:
    """Every suite, a few items each, with a cache: {"results", "out_dir", "cache_dir"}."""
    from eval.harness import run_suites

    root = tmp_path_factory.mktemp("full_run")
    results = run_suites(tiny_model_dir, ALL_SUITES, mirror_dir=shared_data, skills_file=skills_file,
                         out_dir=root / "out", batch_size=4, seed=1234, label="tiny",
                         cache_dir=root / "cache")
    return {"results": results, "out_dir": root / "out", "cache_dir": root / "cache", "root": root}
