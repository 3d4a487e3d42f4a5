"""`lathe`: one subcommand per stage, plus the tools around them.

    lathe --help
    lathe sft --recipe params.yaml sft.max_steps=10

Every stage reads the active recipe (`params.yaml`, the DVC params file) unless `--recipe` names
another; trailing `key.sub=value` arguments override it. Imports are lazy so `lathe --help` is fast.
User-fixable errors print one clear message (no traceback; `--debug` shows it) and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from recipes.stages import TRAINING

# name → (module, function, help). The function is called as function(recipe, args).
COMMANDS = {
    "base": ("pipelines.base", "main", "resolve the base model into a local Hugging Face directory"),
    "data": ("pipelines.data", "main", "load, validate, mix and split training data (`lathe data inspect`: what each row trains)"),
    "sft": ("pipelines.sft", "main", "instruction tuning (TRL SFT, LoRA/QLoRA/full)"),
    "preference": ("pipelines.preference", "main", "preference tuning (TRL DPO)"),
    "rl": ("pipelines.rl", "main", "optional RL stage (TRL GRPO with exact-answer rewards)"),
    "plan": ("pipelines.plan", "main", "estimate per-GPU and CPU memory for a recipe: fits or what to change"),
    "evaluate": ("pipelines.evaluate", "main", "run lm-eval suites on base and tuned models; write the report"),
    "register": ("pipelines.register", "main", "register the tuned model in MLflow (alias candidate)"),
    "promote": ("pipelines.promote", "main", "gate the candidate; move alias champion if it wins"),
    "rollback": ("pipelines.promote", "rollback", "move alias champion back to the previous champion"),
    "report": ("pipelines.promote", "report", "rebuild the report (md + html) from stored results; evaluates nothing"),
    "serve": ("pipelines.serve", "main", "serve a model with the OpenAI-compatible API"),
    "recipe": ("pipelines.recipe_cmd", "main", "show, validate or activate a recipe"),
    "demo": ("pipelines.demo", "main", "run the whole DVC chain and print where everything is"),
    "keys": ("pipelines.keys", "main", "create, list or revoke the server's API keys"),
    "usage": ("pipelines.usage", "main", "tokens and cost served, by key, model or day"),
    "batch": ("pipelines.batch", "main", "run a Batch API input file offline, without a server"),
}

USES_MLFLOW = {"sft", "preference", "rl", "evaluate", "register", "promote", "rollback", "serve", "demo"}

TRAINING_STAGES = TRAINING  # re-launched under distributed.launcher when asked


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lathe", description="Fine-tune, evaluate, register, promote and serve LLMs.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, _, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--recipe", default="params.yaml", help="recipe file or name under recipes/ (default: params.yaml)")
        _extra_args(name, cmd)  # before the overrides: a positional of its own must come first
        cmd.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. sft.max_steps=10")
    return parser


def _extra_args(name: str, cmd: argparse.ArgumentParser) -> None:
    if name == "evaluate":
        cmd.add_argument("--endpoint", help="judge the model behind this OpenAI-compatible server instead "
                                            "(base URL, e.g. http://127.0.0.1:8000/v1); results go to artifacts/endpoint-eval/")
        cmd.add_argument("--served-model", help="the model name the server serves (default: registry.model_name)")
        cmd.add_argument("--tokenizer", help="local dir with the served model's tokenizer (default: the registry "
                                             "champion's, when the served model is registry.model_name)")
    if name == "data":  # `lathe data inspect [...]`: what each row trains (pipelines/inspect_data.py)
        cmd.usage = "lathe data [inspect] [--recipe R] [--rows N] [--split S] [--html FILE] [--json] [overrides ...]"
        cmd.add_argument("--rows", type=int, default=3, help="inspect: rows to show (default 3)")
        cmd.add_argument("--split", default="sft_train", help="inspect: sft_train (default) or sft_val")
        cmd.add_argument("--html", help="inspect: also write the rows, highlighted, to this HTML file")
        cmd.add_argument("--json", action="store_true", help="inspect: print totals and per-row trained spans as JSON")
    if name == "report":
        cmd.add_argument("--out", help="where report.md and report.html go (default: artifacts/report)")
    if name == "promote":
        cmd.add_argument("--force", action="store_true", help="promote even if the gate refuses")
        cmd.add_argument("--reason", help="why (required with --force; recorded on the version)")
        cmd.add_argument("--version", help="model version to promote (default: the candidate alias)")
    if name == "serve":
        cmd.add_argument("--model", help="champion, candidate, models:/name@alias or a local directory")
        cmd.add_argument("--host")
        cmd.add_argument("--port", type=int)
    if name == "plan":
        cmd.add_argument("--gpus", help="GPUs to size for, COUNTxMODEL (8xH100-80GB, 4xA100-40GB); "
                                         "default: distributed.gpus_per_node × nodes × distributed.gpu")
        cmd.add_argument("--cpu-mem-gb", type=float, help="CPU memory per node, to check offloading against")
        cmd.add_argument("--json", action="store_true", help="print the plan as JSON")
    if name == "recipe":
        cmd.add_argument("action", choices=["show", "validate", "use", "schema"], nargs="?", default="show")
        cmd.add_argument("--name", help="recipe to validate or activate (with `use`: written to params.yaml)")
    if name == "keys":
        cmd.add_argument("action", choices=["create", "list", "revoke"])
        cmd.add_argument("--name", help="who or what the new key is for")
        cmd.add_argument("--tier", help="rate-limit tier of the new key (default: platform.default_tier)")
        cmd.add_argument("--id", help="id of the key to revoke (see `lathe keys list`)")
    if name == "usage":
        cmd.add_argument("--since", help="30m, 24h, 7d (ago) or an ISO date such as 2026-11-01 (default: all time)")
        cmd.add_argument("--by", choices=["key", "model", "day"], default="key", help="group totals by (default: key)")
        cmd.add_argument("--key", help="only this key id")
        cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
    if name == "batch":
        cmd.add_argument("action", choices=["run"])
        cmd.add_argument("input", help="Batch API input file (.jsonl)")
        cmd.add_argument("output", help="where the successful results go (.jsonl); failed ones go to --errors")
        cmd.add_argument("--errors", help="where failed lines go (default: <output>.errors.jsonl)")
        cmd.add_argument("--model", help="champion, candidate, models:/name@alias or a local directory")
        cmd.add_argument("--served-name", help="the `model` name the lines may use (default: as `lathe serve` names it)")
        cmd.add_argument("--endpoint", default="/v1/chat/completions", choices=["/v1/chat/completions", "/v1/completions"])


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    module_name, func_name, _ = COMMANDS[args.command]
    if args.command == "data" and args.overrides[:1] == ["inspect"]:
        args.overrides.pop(0)
        module_name, func_name = "pipelines.inspect_data", "main"
    from recipes import events
    from recipes.errors import LatheError

    try:
        recipe = load_args_recipe(args)
        if args.command in TRAINING_STAGES:
            from pipelines import launch

            if launch.maybe_relaunch(args.command, recipe, argv):  # ran as N processes under the launcher
                return 0
        if args.command in USES_MLFLOW:
            from registry import tracking

            tracking.configure(recipe.registry.tracking_uri, Path.cwd())
        func = getattr(importlib.import_module(module_name), func_name)
        code = int(func(recipe, args) or 0)
        if args.command in TRAINING_STAGES:
            from pipelines import launch

            if launch.end_process_group():  # every rank of a launched run waits for rank 0, then closes the group
                # Leave without interpreter teardown: gloo/DeepSpeed worker threads still alive at that point
                # abort the process ("terminate called without an active exception") and fail the launch,
                # although every file is written. All output is flushed first.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        return code
    except LatheError as exc:
        events.emit("error", args.command, kind="user", message=str(exc))
        if args.debug:
            raise
        print(f"lathe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        events.emit("error", args.command, kind="interrupted", message="interrupted")
        print(f"lathe {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or a library's failure: the traceback follows, the watcher gets one line
        events.emit("error", args.command, kind="internal", message=f"{type(exc).__name__}: {exc}")
        raise


def load_args_recipe(args):
    """The recipe named by --recipe with the command line's overrides applied."""
    from recipes import load_recipe

    return load_recipe(Path(args.recipe) if Path(args.recipe).exists() else args.recipe, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
