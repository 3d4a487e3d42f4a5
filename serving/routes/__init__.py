"""HTTP routes, one module per endpoint family. `ROUTERS` is what the app mounts."""

from serving.routes import chat, completions, health, models

ROUTERS = (health.router, models.router, chat.router, completions.router)
