"""The jobs plane as a server plane (serving/app.py `Plane`): its routes, the fine-tuned adapters a restarted server
serves again, and the queue. Composed into a server by whoever starts one with jobs enabled:

    lathe serve serve.fine_tuning.enabled=true        # pipelines/serve.py passes JobsPlane(recipe.serve.fine_tuning)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from jobs.routes import router
from recipes.schema import FineTuningConfig

if TYPE_CHECKING:
    from jobs.service import FineTuningService
    from serving.access import Platform
    from serving.settings import ServerSettings
    from serving.state import ServerState


class JobsPlane:
    name = "fine_tuning"
    router = router

    def __init__(self, config: FineTuningConfig) -> None:
        self.config = config

    def adapters(self, settings: "ServerSettings") -> dict[str, Path]:
        from jobs.service import restore_adapters

        return restore_adapters(settings)

    def start(self, settings: "ServerSettings", state: "ServerState", platform: "Platform") -> "FineTuningService":
        from jobs.service import FineTuningService

        return FineTuningService(settings, self.config, state, platform)
