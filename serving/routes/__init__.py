"""HTTP routes, one module per endpoint family. `ROUTERS` is what the app mounts."""

from serving.routes import batches, chat, completions, files, health, models, usage

ROUTERS = (health.router, models.router, chat.router, completions.router, files.router, batches.router, usage.router)
