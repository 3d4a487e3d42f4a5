"""The server's settings: one typed object that `lathe serve` and `lathe batch run` fill from three layers — the
recipe's `serve:`, then `LATHE_SERVE_<KNOB>` environment variables, then the command line — and `create_app` reads.

    LATHE_SERVE_MAX_QUEUE=16 LATHE_SERVE_PORT=8001 lathe serve
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import EnvSettingsSource

from recipes.errors import LatheError
from recipes.schema import PlatformConfig
from recipes.serve_schema import ServerTuning

ENV_PREFIX = "LATHE_SERVE_"
"""`LATHE_SERVE_` + a ServerTuning knob in capitals (LATHE_SERVE_MAX_BATCH_SIZE=16; `null` unsets an optional one)."""


class ServerSettings(ServerTuning):
    """How to serve one model: what (below) and how (every ServerTuning field, the recipe's `serve:` knobs, one
    definition). Unknown keys are rejected, so a typo fails loudly; frozen: what changes at run time (the live
    model, the adapter pool) lives in serving/state.py."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    model_dir: Path = Field(description="A Hugging Face model directory (config.json, weights, tokenizer).")
    model_name: str = Field("lathe", min_length=1, description="The id clients pass as `model`.")
    model_ref: str | None = Field(
        None, description="The registry reference `model_dir` was resolved from (`champion`, `candidate`, "
                          "`models:/name@alias`). With an alias the server follows it: see watch_interval_s.")
    registry_model_name: str | None = Field(
        None, description="The registered model that `champion`/`candidate` in model_ref belong to.")
    adapters: dict[str, Path] = Field(
        default_factory=dict, description="LoRA adapters of model_dir's base, served side by side: "
                                          "`model` = the key chooses one (engine 'transformers').")
    platform: PlatformConfig = Field(
        default_factory=PlatformConfig, description="API keys, rate-limit tiers, usage prices and the Batch API "
        "(the recipe's `platform` section; its SQLite database keeps them across restarts).")

    @model_validator(mode="after")
    def _check_adapters(self):
        if self.adapters and self.engine != "transformers":
            raise ValueError(f"adapters are served by engine 'transformers' only (engine is '{self.engine}')")
        if self.model_name in self.adapters:
            raise ValueError(f"adapter name '{self.model_name}' is already the base model's model_name")
        return self


def environment_tuning() -> dict:
    """The server knobs set in the environment, parsed by pydantic-settings; a `LATHE_SERVE_` variable that names
    no knob is refused (a typo would otherwise be a setting silently not taken)."""
    known = {ENV_PREFIX + name.upper() for name in ServerTuning.model_fields}
    unknown = sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)
    if unknown:
        raise LatheError(f"environment: {', '.join(unknown)} set no server setting (known: {', '.join(sorted(known))})")
    return EnvSettingsSource(ServerTuning, env_prefix=ENV_PREFIX, case_sensitive=False, env_parse_none_str="null")()


def layered(recipe_tuning: Mapping, cli: Mapping, **what) -> ServerSettings:
    """ServerSettings from the recipe's knobs, the environment's over them, the command line's over both (None
    there: not given), plus `what` is served. A bad value names the layer it came from."""
    env = environment_tuning()
    given = {k: v for k, v in cli.items() if v is not None}
    try:
        return ServerSettings(**{**recipe_tuning, **env, **given, **what})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            origin = ("command line --" + field.replace("_", "-") if field in given else
                      f"environment {ENV_PREFIX}{field.upper()}={env[field]!r}" if field in env else
                      f"serve.{field}" if field in ServerTuning.model_fields else field or "settings")
            problems.append(f"{origin}: {error['msg']}")
        raise LatheError("server settings: " + "; ".join(problems)) from None
