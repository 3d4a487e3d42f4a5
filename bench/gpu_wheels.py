"""The wheels bench/gpu.sh installs on the GPU machine, pinned to the versions of this environment
(the project's own pins), one `name==version` per line for `pip download`.

The GPU image has torch, transformers 5.17, peft, accelerate, aiohttp, anyio, h11, click, pyyaml
and prometheus-client, but not what the Lathe server imports (FastAPI, Starlette, pydantic,
uvicorn, sse-starlette, OpenTelemetry's API that FastAPI imports, python-multipart for the upload
routes), and an older transformers than
the project pins: the continuous batching engine is measured with the version Lathe runs.
"""

from __future__ import annotations

from importlib import metadata

PACKAGES = ["transformers", "peft", "regex", "fastapi", "starlette", "pydantic", "pydantic-core", "annotated-types",
            "annotated-doc", "typing-inspection", "typing-extensions", "opentelemetry-api", "sse-starlette", "uvicorn",
            "prometheus-client", "python-multipart"]


def pins() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in PACKAGES]


if __name__ == "__main__":
    print("\n".join(pins()))
