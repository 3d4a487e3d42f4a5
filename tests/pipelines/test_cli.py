"""The `lathe` command line: fast help, clear errors without tracebacks."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

LATHE = [str(Path(sys.executable).parent / "lathe")]


def run(*args, cwd=ROOT):
    return subprocess.run(LATHE + list(args), cwd=cwd, capture_output=True, text=True, timeout=120)


def test_help_lists_every_stage_without_heavy_imports():
    done = run("--help")
    assert done.returncode == 0
    for stage in ("base", "data", "sft", "preference", "evaluate", "register", "promote", "serve"):
        assert stage in done.stdout
    probe = subprocess.run([sys.executable, "-c", "import sys, pipelines.cli as c; c.build_parser(); "
                            "print(sorted(m for m in ('torch', 'transformers', 'mlflow', 'lm_eval', 'trl') if m in sys.modules))"],
                           capture_output=True, text=True, cwd=ROOT)
    assert probe.stdout.strip() == "[]"


def test_bad_override_is_one_clear_error():
    done = run("sft", "sft.learnin_rate=3")
    assert done.returncode == 2
    assert "sft.learnin_rate (command-line override): unknown key" in done.stderr
    assert "Traceback" not in done.stderr


def test_recipe_validate_and_show():
    assert "valid" in run("recipe", "validate", "--name", "llama-3.1-8b-lora").stdout
    shown = run("recipe", "show", "sft.max_steps=3").stdout
    assert "max_steps: 3" in shown


def test_missing_previous_stage_names_the_fix_and_tells_a_watcher(tmp_path):
    import json
    import os

    (tmp_path / "params.yaml").write_text("name: x\n")
    done = subprocess.run(LATHE + ["sft"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LATHE_EVENTS": str(tmp_path / "events.jsonl")})
    assert done.returncode == 2 and "run the 'base' stage first" in done.stderr
    [event] = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert event["type"] == "error" and event["stage"] == "sft" and event["kind"] == "user"
    assert "run the 'base' stage first" in event["message"]


def test_dvc_stages_run_lathe_without_the_venv_on_path():
    """`.venv/bin/dvc repro` runs stage commands with the caller's PATH: dvc.yaml's `bin/lathe` finds the
    project's venv itself (the README's `dvc repro` and `dvc exp run` used to end with exit 127)."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert all(stage["cmd"].startswith("bin/lathe ") for stage in stages.values())
    if not (ROOT / ".venv" / "bin" / "python").exists():
        return  # an installed Lathe: bin/lathe hands over to the `lathe` on PATH
    done = subprocess.run(["bin/lathe", "data", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert done.returncode == 0 and "inspect" in done.stdout, done.stderr
