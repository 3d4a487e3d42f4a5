"""Tool use through `lathe serve` and the official `openai` client: the base model against the model
tuned by recipes/tools-135m.yaml, on BFCL items that training never saw.

    .venv/bin/python -m bench.tools                   # trains (the recipe's chain in a project copy), then asks
    .venv/bin/python -m bench.tools --tuned DIR       # ask an already tuned model directory
    .venv/bin/python -m bench.tools --project DIR     # ask the models of a chain that already ran in DIR
    .venv/bin/python -m bench.tools --limit 40        # fewer items per BFCL set

For each model a server is started and asked the held-out items of simple_python and of multiple
(eval/tools.py) twice: `tool_choice: auto` (the model decides whether to call; once it writes <tool_call>
the server holds the call to the schema) and `tool_choice: required` (constrained: the reply is a call).
Calls are scored with BFCL's rule; per set and mode the tuned − base paired delta (eval/paired.py)
goes to bench/results/tools.json with the in-process `tools` suite scores and the gate's decision.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from bench.common import SHARED_DATA, copy_project, log, write_result
from bench.server_process import start_server

SETS = ("simple_python", "multiple")
MODES = ("auto", "required")


def train(work: Path) -> Path:
    """The tools recipe's chain (`lathe demo`) in a fresh project copy; returns the copy."""
    dest = work / "project"
    dest.mkdir(parents=True)
    copy_project(dest)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", DVC_NO_ANALYTICS="1",
               HF_HUB_OFFLINE="1", PYTHONPATH=str(dest))
    lathe = str(Path(sys.executable).parent / "lathe")
    subprocess.run([lathe, "recipe", "use", "--name", "tools-135m"], cwd=dest, env=env, check=True, capture_output=True)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["eval"]["mirror_dir"] = str(SHARED_DATA.resolve())
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log("tools: lathe demo (recipes/tools-135m.yaml)")
    started = time.time()
    done = subprocess.run([lathe, "demo"], cwd=dest, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"tools: the chain failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    log(f"tools: chain done in {time.time() - started:.0f} s")
    return dest


def ask(model_dir: Path, items: dict, work: Path, label: str, modes: tuple[str, ...] = MODES) -> dict:
    """{(set, mode): {item id: 1.0 | 0.0}} from the served model, plus a few answers to look at."""
    import openai

    from eval import tools

    # `lathe serve`'s own engine (recipes: serve.engine: transformers): the one with tools and constrained decoding.
    server = start_server(model_dir, work / f"server-{label}.log", engine="transformers")
    client = openai.OpenAI(base_url=server.api, api_key="none", max_retries=0, timeout=300)
    scores: dict = {}
    shown: dict = {}
    try:
        for subset, chosen in items.items():
            for mode in modes:
                def one(item):
                    try:
                        reply = client.chat.completions.create(model="lathe", messages=item.messages, tools=item.tools,
                                                               tool_choice=mode, temperature=0, max_tokens=96)
                    except openai.BadRequestError as exc:  # e.g. a schema constrained decoding cannot compile
                        return item, None, f"400: {exc.message[:200]}"
                    message = reply.choices[0].message
                    calls = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]
                    return item, message, tools.check(calls, item.ground_truth)

                with ThreadPoolExecutor(8) as pool:
                    results = list(pool.map(one, chosen))
                scores[f"{subset}/{mode}"] = {item.id: float(reason is None) for item, _, reason in results}
                shown[f"{subset}/{mode}"] = [{"id": item.id, "question": item.messages[-1]["content"][:200],
                                              "content": message.content if message else None,
                                              "tool_calls": [c.function.model_dump() for c in (message.tool_calls or [])]
                                              if message else [], "verdict": reason or "right"}
                                             for item, message, reason in results[:3]]
                refused = [reason for _, message, reason in results if message is None]
                if refused:
                    log(f"tools: {label} {subset} {mode}: {len(refused)} requests refused, e.g. {refused[0]}")
                log(f"tools: {label} {subset} {mode}: {sum(scores[f'{subset}/{mode}'].values()):.0f}/{len(chosen)} right")
    finally:
        server.stop()
    return {"scores": scores, "answers": shown}


def main() -> int:
    from eval import tools
    from eval.paired import paired

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tuned", help="an already tuned model directory (skips training)")
    parser.add_argument("--project", help="a project copy where the recipe's chain already ran (skips training; "
                                          "its tools suite scores and gate decision are reported too)")
    parser.add_argument("--base", help="the base model directory (default: the chain's, or artifacts/base/model)")
    parser.add_argument("--limit", type=int, default=60, help="held-out items per BFCL set (default 60, as the recipe's suite)")
    parser.add_argument("--modes", default=",".join(MODES), help="tool_choice modes to ask, comma-separated (default: auto,required)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lathe-tools-"))
    project = Path(args.project) if args.project else None if args.tuned else train(work)
    art = (project or Path.cwd()) / "artifacts"
    tuned = Path(args.tuned) if args.tuned else Path(json.loads((art / "preference" / "manifest.json").read_text())["outputs"]["model_dir"])
    tuned = tuned if tuned.is_absolute() else (project or Path.cwd()) / tuned
    base = Path(args.base) if args.base else art / "base" / "model"
    items = {s: [i for i in tools.load_items(SHARED_DATA, s) if tools.held_out(i.id)][:args.limit] for s in SETS}
    modes = tuple(m for m in args.modes.split(",") if m)
    if bad := set(modes) - set(MODES):
        raise SystemExit(f"--modes: {sorted(bad)} are not tool_choice modes this bench asks ({', '.join(MODES)})")
    served = {label: ask(model, items, work, label, modes) for label, model in (("base", base), ("tuned", tuned))}
    deltas = {key: paired(served["base"]["scores"][key], served["tuned"]["scores"][key]).to_dict()
              for key in served["base"]["scores"]}
    payload = {"limit": args.limit, "items": {s: len(v) for s, v in items.items()}, "served": deltas,
               "answers": {label: s["answers"] for label, s in served.items()}}
    if project:
        payload["suite"] = {label: json.loads((art / "evaluate" / label / "results.json").read_text())["suites"]["tools"]["metrics"]
                            for label in ("base", "tuned")}
        decision = json.loads((art / "promote" / "decision.json").read_text())
        payload["decision"] = {"promote": decision["promote"], "reasons": decision["reasons"]}
    write_result("tools", payload)
    for key, d in deltas.items():
        print(f"{key:24s} base {d['mean_a']:.3f}  tuned {d['mean_b']:.3f}  Δ {d['delta']:+.3f} (p {d['p_value']:.2g}, n {d['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
