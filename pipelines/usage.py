"""`lathe usage`: tokens and cost recorded by the server (online and batch), grouped by key, model or day.

    lathe usage                          # all time, by key
    lathe usage --since 7d --by model
    lathe usage --since 2026-11-01 --by day --key 3f9a0c1b2d4e

Costs come from the recipe's `platform.prices` at the time each request was served.
"""

from __future__ import annotations

import json

from recipes import LatheError
from recipes.schema import Recipe


def main(recipe: Recipe, args) -> int:
    from accounts.store import Store
    from accounts.usage import parse_since, totals, usage_report
    from pipelines.keys import _table

    try:
        since = parse_since(args.since)
    except ValueError as exc:
        raise LatheError(f"--since: {exc}") from None
    store = Store(recipe.platform.db_path)
    groups = usage_report(store, since, args.by, key_id=args.key)
    if args.json:
        print(json.dumps({"by": args.by, "since": since, "data": groups, "totals": totals(groups)}, indent=2))
        return 0
    if not groups:
        print(f"no usage recorded in {store.path}" + (f" since {args.since}" if args.since else ""))
        return 0
    rows = [_row(g[args.by], g) for g in groups] + [_row("total", totals(groups))]
    _table((args.by, "requests", "batch", "prompt tokens", "completion tokens", "cost (USD)"), rows)
    return 0


def _row(name, group: dict) -> tuple:
    return (name, group["requests"], group["batch_requests"], group["prompt_tokens"], group["completion_tokens"],
            f"{group['cost_usd']:.6f}")
