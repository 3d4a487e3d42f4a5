"""`python -m eval`: run suites on a model directory, or build a report from results files.

    python -m eval run MODEL_DIR --suites mmlu,gsm8k,hellaswag,humaneval --out out/base
    python -m eval run MODEL_DIR --suites-file my_suites.yaml --out out/base   # custom suites, judges, limits
    python -m eval report out/base/results.json out/tuned/results.json --out out/report

The pipeline calls the same functions (eval.harness.run_suites, eval.report.write_report); this entry
point is for evaluating any local model by hand, e.g. full unlimited suites on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from recipes.errors import LatheError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="evaluate a local Hugging Face model directory")
    run.add_argument("model_dir")
    run.add_argument("--suites", default="mmlu,gsm8k,hellaswag,humaneval",
                     help="comma-separated: skills, mmlu, gsm8k, hellaswag, humaneval")
    run.add_argument("--suites-file", default=None,
                     help="YAML list of suites written as a recipe's eval.suites (custom suites from your files, "
                          "judges, limits, few-shot); replaces --suites, --limit and --subjects")
    run.add_argument("--mirror", default="../shared/data", help="benchmark mirror (layout in eval/README.md)")
    run.add_argument("--skills-file", default=None)
    run.add_argument("--out", required=True)
    run.add_argument("--limit", type=int, default=None, help="items per task (MMLU: per subject); default all")
    run.add_argument("--subjects", default=None, help="comma-separated MMLU subjects; default all 57")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--seed", type=int, default=1234)
    run.add_argument("--chat-template", action="store_true", help="apply the chat template (skills always does)")
    run.add_argument("--device", default="cpu")
    run.add_argument("--dtype", default="float32")
    run.add_argument("--cache", default=None, help="cache dir: reuse results of identical (model, settings)")
    run.add_argument("--label", default="model")
    report = sub.add_parser("report", help="write report.md and report.html from results.json files")
    report.add_argument("results", nargs="+", help="results.json files; the first is the baseline")
    report.add_argument("--out", required=True)
    report.add_argument("--title", default="Lathe evaluation report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            from eval.harness import flat_metrics, run_suites
            from recipes.schema import SuiteConfig

            if args.suites_file:
                suites = suites_from_file(Path(args.suites_file))
            else:
                subjects = args.subjects.split(",") if args.subjects else None
                try:
                    suites = [SuiteConfig(name=name.strip(), limit=args.limit,
                                          subjects=subjects if name.strip() == "mmlu" else None)
                              for name in args.suites.split(",") if name.strip()]
                except ValueError as exc:  # pydantic's ValidationError: an unknown suite name, a bad limit
                    raise LatheError(f"--suites/--limit: {exc}") from None
            results = run_suites(args.model_dir, suites, mirror_dir=args.mirror, skills_file=args.skills_file,
                                 out_dir=args.out, batch_size=args.batch_size, seed=args.seed,
                                 apply_chat_template=args.chat_template, label=args.label, cache_dir=args.cache,
                                 device=args.device, dtype=args.dtype)
            print(json.dumps(flat_metrics(results), indent=1))
            for name, entry in results["suites"].items():
                if entry["status"] != "ok":
                    print(f"{name}: not run: {entry['reason']}\n  fix: {entry['fix']}", file=sys.stderr)
        else:
            from eval.report import write_report

            loaded = {}
            for path in args.results:
                data = json.loads(Path(path).read_text())
                loaded[data.get("label") or path] = data
            for written in write_report(loaded, args.out, title=args.title):
                print(written)
    except LatheError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def suites_from_file(path: Path) -> list:
    """The suites of a YAML file holding a list of `eval.suites` entries (or a recipe, whose eval.suites are
    taken); each entry checked as the recipe checks it, an error naming the file and the entry."""
    import yaml

    from recipes.schema import SuiteConfig

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LatheError(f"--suites-file {path}: cannot read it ({exc})") from None
    if isinstance(data, dict):
        data = (data.get("eval") or {}).get("suites")
    if not isinstance(data, list) or not data:
        raise LatheError(f"--suites-file {path}: expected a list of suites (as a recipe's eval.suites), or a "
                         "recipe with eval.suites")
    suites = []
    for index, entry in enumerate(data):
        try:
            suites.append(SuiteConfig.model_validate(entry))
        except ValueError as exc:
            name = entry.get("name") if isinstance(entry, dict) else entry
            raise LatheError(f"--suites-file {path}: suite #{index + 1} ({name!r}): {exc}") from None
    return suites


if __name__ == "__main__":
    raise SystemExit(main())
