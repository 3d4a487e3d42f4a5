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

# name → (module, function, help). The function is called as function(recipe, args).
COMMANDS = {
    "base": ("pipelines.base", "main", "resolve the base model into a local Hugging Face directory"),
    "data": ("pipelines.data", "main", "load, validate, mix and split training data"),
    "sft": ("pipelines.sft", "main", "instruction tuning (TRL SFT, LoRA/QLoRA/full)"),
    "preference": ("pipelines.preference", "main", "preference tuning (TRL DPO)"),
    "evaluate": ("pipelines.evaluate", "main", "run lm-eval suites on base and tuned models; write the report"),
    "register": ("pipelines.register", "main", "register the tuned model in MLflow (alias candidate)"),
    "promote": ("pipelines.promote", "main", "gate the candidate; move alias champion if it wins"),
    "rollback": ("pipelines.promote", "rollback", "move alias champion back to the previous champion"),
    "serve": ("pipelines.serve", "main", "serve a model with the OpenAI-compatible API"),
    "recipe": ("pipelines.recipe_cmd", "main", "show, validate or activate a recipe"),
    "demo": ("pipelines.demo", "main", "run the whole DVC chain and print where everything is"),
}

USES_MLFLOW = {"sft", "preference", "rl", "evaluate", "register", "promote", "rollback", "serve", "demo"}


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
    if name == "promote":
        cmd.add_argument("--force", action="store_true", help="promote even if the gate refuses")
        cmd.add_argument("--reason", help="why (required with --force; recorded on the version)")
        cmd.add_argument("--version", help="model version to promote (default: the candidate alias)")
    if name == "serve":
        cmd.add_argument("--model", help="champion, candidate, models:/name@alias or a local directory")
        cmd.add_argument("--host")
        cmd.add_argument("--port", type=int)
    if name == "recipe":
        cmd.add_argument("action", choices=["show", "validate", "use", "schema"], nargs="?", default="show")
        cmd.add_argument("--name", help="recipe to validate or activate (with `use`: written to params.yaml)")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    args = build_parser().parse_args(argv)
    module_name, func_name, _ = COMMANDS[args.command]
    from recipes.errors import LatheError

    try:
        recipe = load_args_recipe(args)
        if args.command in USES_MLFLOW:
            from registry import tracking

            tracking.configure(recipe.registry.tracking_uri, Path.cwd())
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func(recipe, args) or 0)
    except LatheError as exc:
        if args.debug:
            raise
        print(f"lathe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lathe {args.command}: interrupted", file=sys.stderr)
        return 130


def load_args_recipe(args):
    """The recipe named by --recipe with the command line's overrides applied."""
    from recipes import load_recipe

    return load_recipe(Path(args.recipe) if Path(args.recipe).exists() else args.recipe, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
