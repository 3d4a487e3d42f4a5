"""Quality bench: the default chain twice — with the forgetting measures (self-distillation replay) and
without them (the old way) — and what the gate made of each.

    .venv/bin/python -m bench.quality                 # both runs, ~25-30 min on 2 CPU cores
    .venv/bin/python -m bench.quality --only replay   # one of them

Each run is `lathe demo` (= `dvc repro`) in a fresh copy of the project (its own MLflow store, so each
first candidate is judged against the base model: champion zero). The copies share one evaluation and
base-answer cache, so the base model is judged once. Written to bench/results/quality.json: per run,
skills, MMLU, HellaSwag and retention for the base, SFT and tuned models, the tuned model's paired deltas
vs the base (Δ, SE, p, minimum detectable drop), the gate's decision with its reasons, greedy answers to
the two user checks ("Say hi.", "What is the capital of France?") and the chain's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import SHARED_DATA, copy_project, log, write_result

RUNS = {
    "replay": [],                                          # the default recipe as shipped
    # the chain before the forgetting measures: no replay, SFT 30 steps of 8 padded rows, same learning rate
    "old_way": ["data.replay.enabled=false", "sft.max_steps=30", "sft.batch_size=8", "sft.packing=false"],
}
HEADLINE = ("skills/exact_match", "mmlu/acc", "hellaswag/acc_norm", "retention/kl", "retention/nll_gap")


def _params(dest: Path, overrides: list[str]) -> None:
    from recipes.loader import apply_overrides

    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["eval"]["mirror_dir"] = str(SHARED_DATA.resolve())
    (dest / "params.yaml").write_text(yaml.safe_dump(apply_overrides(params, overrides), sort_keys=False))


def run_chain(name: str, overrides: list[str], work: Path, cache: Path) -> dict:
    dest = work / name
    dest.mkdir(parents=True)
    copy_project(dest)
    _params(dest, overrides)
    (dest / ".lathe").symlink_to(cache, target_is_directory=True)  # eval cache + base answers, shared
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # PYTHONPATH: the copy's own modules, not the editable install's (the working tree may change meanwhile)
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(dest))
    log(f"quality: {name}: lathe demo {' '.join(overrides)}")
    started = time.time()
    done = subprocess.run([str(Path(sys.executable).parent / "lathe"), "demo"], cwd=dest, env=env,
                          capture_output=True, text=True)
    wall = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"quality: {name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return summarise(dest, overrides, wall)


def summarise(dest: Path, overrides: list[str], wall: float) -> dict:
    art = dest / "artifacts"
    comparisons = json.loads((art / "evaluate" / "comparisons.json").read_text())
    decision = json.loads((art / "promote" / "decision.json").read_text())
    models = {}
    for label in ("base", "sft", "tuned"):
        results = art / "evaluate" / label / "results.json"
        if not results.exists():
            continue
        suites = json.loads(results.read_text())["suites"]
        scores = {}
        for key in HEADLINE:
            suite, metric = key.split("/")
            entry = suites.get(suite, {})
            if entry.get("status") == "ok" and entry["metrics"].get(metric) is not None:
                scores[key] = {"value": entry["metrics"][metric], "stderr": entry["metrics"].get(f"{metric}_stderr"),
                               "n": entry.get("settings", {}).get("n_samples", {}).get("scored")}
        models[label] = scores
        if label == "tuned":
            models[label]["answers"] = {s["prompt"]: s["model"] for s in suites.get("retention", {}).get("side_by_side", [])[:2]}
    paired = {k: {f: v[f] for f in ("n", "mean_a", "mean_b", "delta", "se", "p_value", "mde", "discordant")}
              for k, v in comparisons["against"]["base"]["paired"].items() if not k.startswith("_")}
    return {"overrides": overrides, "wall_s": round(wall), "models": models, "tuned_vs_base": paired,
            "decision": {"promote": decision["promote"], "compared_with": decision.get("compared_with"),
                         "reasons": decision["reasons"],
                         "checks": [{"name": c["name"], "passed": c["passed"], "detail": c["detail"]}
                                    for c in decision["checks"]]}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=list(RUNS), help="run one of the two chains")
    parser.add_argument("--keep", action="store_true", help="keep the project copies (printed)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lathe-quality-"))
    cache = work / "shared-cache"
    cache.mkdir()
    runs = {}
    try:
        for name, overrides in RUNS.items():
            if args.only in (None, name):
                runs[name] = run_chain(name, overrides, work, cache)
                log(f"quality: {name}: {json.dumps(runs[name]['decision']['reasons'])}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"quality: project copies kept in {work}")
    path = write_result("quality", {"runs": runs})
    for name, run in runs.items():
        tuned = run["models"].get("tuned", {})
        print(f"{name}: promote={run['decision']['promote']} ({run['decision']['compared_with']}), "
              + ", ".join(f"{k} {v['value']:.3f}" for k, v in tuned.items() if k != "answers")
              + f", wall {run['wall_s']} s")
        for key, c in run["tuned_vs_base"].items():
            print(f"   {key:24s} Δ {c['delta']:+.3f} ± {c['se']:.3f}  p {c['p_value']:.3g}  MDE {c['mde']:.3f}")
    print(f"quality: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
