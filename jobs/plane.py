"""The jobs plane as a server plane (serving/app.py `Plane`): its routes, the fine-tuned adapters and whole models a
restarted server serves again, and the queue. Composed into a server by whoever starts one with jobs enabled:

    lathe serve serve.fine_tuning.enabled=true        # pipelines/serve.py passes JobsPlane(recipe.serve.fine_tuning)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.routes import router
from recipes.schema import FineTuningConfig

if TYPE_CHECKING:
    from jobs.service import FineTuningService
    from serving.access import Platform
    from serving.settings import ServerSettings
    from serving.state import ServerState


log = logging.getLogger("lathe.serving")


class JobsPlane:
    name = "fine_tuning"
    router = router

    def __init__(self, config: FineTuningConfig) -> None:
        self.config = config

    def adapters(self, settings: "ServerSettings") -> dict[str, Path]:
        """{fine_tuned_model: adapter dir} of the succeeded LoRA jobs trained on this server's base model, read
        before the engine is created so that it loads them with the base (a restart keeps serving them)."""
        if settings.engine != "transformers":
            return {}
        return _found(settings, False, str(Path(settings.model_dir).resolve()))

    def models(self, settings: "ServerSettings") -> dict[str, Path]:
        """{fine_tuned_model: model dir} of the succeeded Full jobs (and their checkpoints): served again after a
        restart, each loaded when first called; none when this server serves no whole model beside its own."""
        found = _found(settings, True)
        if found and (settings.engine != "transformers" or settings.max_full_models == 0):
            log.warning("%d Full fine-tuned model(s) are not served: whole models beside the base need engine "
                        "'transformers' and serve.max_full_models > 0", len(found))
            return {}
        return found

    def start(self, settings: "ServerSettings", state: "ServerState", platform: "Platform") -> "FineTuningService":
        from jobs.service import FineTuningService

        return FineTuningService(settings, self.config, state, platform)


def _found(settings: "ServerSettings", full: bool, base_model_dir: str | None = None) -> dict[str, Path]:
    from accounts.jobs import succeeded_outputs

    db = Path(settings.platform.db_path)
    rows = succeeded_outputs(db, full, base_model_dir) if db.exists() else []
    found = {name: Path(path) for name, path in rows if path and Path(path).is_dir()}
    if len(found) < len(rows):
        log.warning("%d fine-tuned model(s) are gone from disk and are not served", len(rows) - len(found))
    return found
