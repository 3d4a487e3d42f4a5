"""Follow a registry alias: when `champion` (or any alias the server was started from) moves, load
the new version next to the old one and swap it in. Requests in flight finish on the engine they
started with (state.py); new ones go to the new version. Polling keeps this independent of how the
alias is moved (promotion stage, MLflow UI, another machine).
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from serving.settings import ServerSettings

log = logging.getLogger("lathe.serving")

_ALIAS_REF = re.compile(r"^models:/(?P<name>[^@/]+)@(?P<alias>[^/]+)$")
_BARE_ALIASES = ("champion", "candidate")


class AliasWatcher:
    def __init__(self, settings: ServerSettings, name: str, alias: str) -> None:
        self.settings = settings
        self.name = name
        self.alias = alias
        self._skipped: str | None = None  # a version that failed to load: not retried until the alias moves

    @classmethod
    def for_settings(cls, settings: ServerSettings) -> "AliasWatcher | None":
        """A watcher when the model came from an alias and watching is on; None otherwise (a folder,
        a fixed version `models:/name/3`)."""
        ref = (settings.model_ref or "").strip()
        if not ref or settings.watch_interval_s <= 0:
            return None
        match = _ALIAS_REF.match(ref)
        if match:
            return cls(settings, match["name"], match["alias"])
        if ref in _BARE_ALIASES and settings.registry_model_name:
            return cls(settings, settings.registry_model_name, ref)
        return None

    def current_version(self) -> str | None:
        """The version the alias points at now (blocking: MLflow), None if unknown or unreachable."""
        from registry.models import get_version

        try:
            info = get_version(self.name, self.alias)
        except Exception as exc:  # noqa: BLE001 - a registry hiccup must not take the server down
            log.warning("cannot read %s@%s from the registry: %s", self.name, self.alias, exc)
            return None
        return info.version if info is not None else None

    def version_serving(self, model_dir: Path) -> str | None:
        """The alias's version if `model_dir` holds it; None otherwise (the first poll then loads it)."""
        from registry.models import resolve

        version = self.current_version()
        try:
            same = version is not None and Path(resolve(f"models:/{self.name}/{version}")) == Path(model_dir).resolve()
        except Exception:  # noqa: BLE001
            same = False
        return version if same else None

    async def follow(self, state) -> None:
        """Poll forever (cancelled at shutdown)."""
        swaps: set[asyncio.Task] = set()
        while True:
            await asyncio.sleep(self.settings.watch_interval_s)
            version = await asyncio.to_thread(self.current_version)
            if version is None or version == state.served.version or version == self._skipped:
                continue
            served = await self._load(version, state.adapter_pool)
            if served is not None and not state.draining:
                task = asyncio.create_task(state.swap(served))  # waits for the old model's last request
                swaps.add(task)
                task.add_done_callback(swaps.discard)

    async def _load(self, version: str, pool: dict):
        from registry.models import resolve
        from serving.state import new_served_model

        log.info("%s@%s moved to version %s: loading it", self.name, self.alias, version)
        served = None
        try:
            model_dir = Path(await asyncio.to_thread(resolve, f"models:/{self.name}/{version}"))
            served = new_served_model(self.settings, model_dir, pool, version)
            await served.engine.load()
        except Exception:  # noqa: BLE001 - keep serving the current version
            log.exception("version %s of %s could not be loaded; still serving the previous one", version, self.name)
            self._skipped = version
            if served is not None:
                served.engine.close()
            return None
        return served
