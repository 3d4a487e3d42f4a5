"""Serving: an OpenAI-compatible HTTP server over a fine-tuned model directory.

`serving.app.create_app(settings)` builds the FastAPI app; `serving.app.run(settings)` serves it with
uvicorn. Nothing heavy is imported here, so `lathe --help` stays fast.
"""
