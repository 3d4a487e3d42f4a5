"""`lathe keys`: create, list and revoke the API keys of the server (recipe `platform.db_path`).

    lathe keys create --name ci-bot --tier build     # prints the key once: store it now
    lathe keys list
    lathe keys revoke --id 3f9a0c1b2d4e

Only a hash of each key's secret is stored; the key itself cannot be shown again.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone

from recipes import LatheError
from recipes.schema import Recipe


def main(recipe: Recipe, args) -> int:
    from accounts.keys import create_key, list_keys, revoke_key
    from accounts.store import Store

    store = Store(recipe.platform.db_path)
    if args.action == "create":
        key, secret = create_key(store, args.name or "", args.tier or recipe.platform.default_tier, recipe.platform)
        print(f"created key {key.id} '{key.name}' (tier {key.tier}) in {store.path}. The key is shown only "
              "now; clients send it as `Authorization: Bearer <key>` (openai: api_key=...):", file=sys.stderr)
        print(secret)
    elif args.action == "list":
        keys = list_keys(store)
        if not keys:
            print(f"no API keys in {store.path} (create one with `lathe keys create --name ...`)")
        rows = [(k.id, k.name, k.tier, _when(k.created_at), f"revoked {_when(k.revoked_at)}" if k.revoked_at
                 else "active") for k in keys]
        _table(("id", "name", "tier", "created (UTC)", "status"), rows)
    elif args.action == "revoke":
        if not args.id:
            raise LatheError("which key? `lathe keys revoke --id <id>` (ids: `lathe keys list`)")
        key = revoke_key(store, args.id)
        print(f"revoked key {key.id} '{key.name}': requests with it now get 401")
    return 0


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _table(header: tuple[str, ...], rows: list[tuple]) -> None:
    if not rows:
        return
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
