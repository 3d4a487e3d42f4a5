"""`lathe demo`: run the whole DVC chain on the active recipe and say where everything is.

    lathe demo        (what `make demo` runs)

Ends with three lines: where the eval report is, which model version is champion, and the command
that serves it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from recipes.errors import LatheError
from recipes.schema import Recipe


def main(recipe: Recipe, args) -> int:
    from registry import models, tracking

    bin_dir = str(Path(sys.executable).parent)
    # One MLflow parent run groups the stages of this execution: pipeline_run exports its id (and the
    # store) to the environment that `dvc repro` passes on to every stage (see registry/tracking.py).
    with tracking.pipeline_run(recipe.registry.experiment, f"{recipe.name}-{uuid.uuid4().hex[:6]}",
                               tags=tracking.runtime_tags(Path.cwd())):
        env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
        done = subprocess.run([os.path.join(bin_dir, "dvc"), "repro"], env=env)
        if done.returncode != 0:
            raise LatheError(f"`dvc repro` failed (exit {done.returncode}); the failing stage's message is above")
        tracking.log_artifacts([p for p in ("dvc.lock", "params.yaml") if Path(p).exists()], "pipeline")

    report = Path("artifacts/promote/report.html").resolve()
    decision = json.loads(Path("artifacts/promote/decision.json").read_text())
    champion = models.get_version(recipe.registry.model_name, "champion")
    print()
    print(f"Eval report:  {report}  (Markdown: {report.with_suffix('.md')})")
    if champion is None:
        print(f"Champion:     none yet for {recipe.registry.model_name} (gate said: {'; '.join(decision.get('reasons', []))})")
    else:
        print(f"Champion:     {recipe.registry.model_name} version {champion.version} (models:/{recipe.registry.model_name}@champion)")
    print(f"Serve it:     .venv/bin/lathe serve   # OpenAI-compatible API on http://{recipe.serve.host}:{recipe.serve.port}/v1")
    return 0
