"""For tests that run the DVC chain as a user does: a committed copy of this project in a temporary
directory, the commands run in it as subprocesses, and the environment of a user who typed the README's
commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import ROOT, SHARED_DATA

BIN = Path(sys.executable).parent


def copy_project(dest: Path, params: dict | None = None) -> Path:
    """The checkout's tracked and unignored files, committed in a new git repo at `dest` (DVC wants one),
    with `params` merged into params.yaml section by section and the eval mirror pointed at ../shared."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    recipe = yaml.safe_load((dest / "params.yaml").read_text())
    for section, values in (params or {}).items():
        recipe[section] = {**recipe.get(section, {}), **values} if isinstance(values, dict) else values
    recipe["eval"]["mirror_dir"] = str(SHARED_DATA)  # the copy is not beside ../shared
    (dest / "params.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], cwd=dest, check=True)
    return dest


def env() -> dict:
    """This venv first on PATH, no MLflow store inherited from the test process."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out.update(PATH=f"{BIN}{os.pathsep}{out['PATH']}", DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1")
    return out


def readme_env(project: Path) -> dict:
    """The environment of a user who typed the README's commands: no venv on PATH, the project's `.venv`."""
    venv = project / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.prefix), target_is_directory=True)
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "VIRTUAL_ENV"))}
    out.update(PATH=os.pathsep.join(p for p in out["PATH"].split(os.pathsep) if Path(p) != BIN),
               DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1")
    return out


def run(args, cwd, **kw) -> str:
    """Run a command in the project; its stdout, or a failed assertion with the end of both streams."""
    done = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout


def run_demo(dest: Path, params: dict | None = None, timeout: float = 2400) -> Path:
    """`lathe demo` (what `make demo` runs) in a committed copy of the project at `dest`; its output is kept in
    demo.out there."""
    dest.mkdir(parents=True)
    copy_project(dest, params)
    started = time.time()
    out = run([str(BIN / "lathe"), "demo"], dest, timeout=timeout)
    print(f"lathe demo took {time.time() - started:.0f} s\n{out[-2000:]}")
    (dest / "demo.out").write_text(out)
    return dest
