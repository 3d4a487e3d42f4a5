"""The server's settings: one typed object that `lathe serve` fills from the recipe's `serve:` (+ command line) and
`create_app` reads."""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field, model_validator

from recipes.schema import PlatformConfig
from recipes.serve_schema import ServerTuning


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
