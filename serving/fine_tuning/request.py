"""POST /v1/fine_tuning/jobs: OpenAI's request and Together's fields -> one JobSpec.

OpenAI: `model`, `training_file`, `validation_file`, `hyperparameters` (batch_size,
learning_rate_multiplier, n_epochs), `method` ({type: supervised|dpo, supervised|dpo: {hyperparameters}},
dpo adds `beta`), `suffix`, `seed`, `metadata`. Together: `n_epochs`, `learning_rate`, `batch_size`,
`lora`, `lora_r`, `lora_alpha`, `lora_dropout`, `lora_trainable_modules`, `warmup_ratio`,
`n_checkpoints`, `n_evals` (validation loss that many times during training), `train_on_inputs`, `training_method` ({method: sft|dpo, dpo_beta}).

A setting given twice with different values (e.g. `n_epochs` and `hyperparameters.n_epochs`) is a 400
naming both; "auto" or absent means "the base recipe's value". Fields neither API defines are ignored
(and logged), as the other endpoints do.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serving.errors import invalid_request
from serving.protocol import ValidUnicodeBody

log = logging.getLogger("lathe.serving")

Auto = Literal["auto"]
PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]
SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Hyperparameters(_Open):
    batch_size: PositiveInt | Auto | None = None
    learning_rate_multiplier: PositiveFloat | Auto | None = None
    n_epochs: PositiveInt | Auto | None = None
    beta: PositiveFloat | Auto | None = None


class MethodConfig(_Open):
    hyperparameters: Hyperparameters | None = None


class Method(_Open):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: MethodConfig | None = None
    dpo: MethodConfig | None = None
    reinforcement: dict | None = None


class TrainingMethod(_Open):
    """Together's `training_method`."""

    method: Literal["sft", "dpo"]
    dpo_beta: float | None = Field(None, gt=0)


class CreateJob(_Open, ValidUnicodeBody):
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: str | None = None
    seed: int | None = Field(None, ge=0, lt=2**31)
    metadata: dict[str, str] | None = None
    # Together's fields
    n_epochs: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0)
    batch_size: PositiveInt | Literal["max"] | None = None
    lora: bool | None = None
    lora_r: int | None = Field(None, ge=1)
    lora_alpha: int | None = Field(None, ge=1)
    lora_dropout: float | None = Field(None, ge=0, lt=1)
    lora_trainable_modules: str | list[str] | None = None
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    n_checkpoints: int | None = Field(None, ge=1)
    n_evals: int | None = Field(None, ge=0)
    train_on_inputs: bool | Auto | None = None
    training_method: TrainingMethod | None = None


# Settings a JobSpec carries; None = the base recipe's value.
SPEC_KEYS = ("batch_size", "learning_rate", "learning_rate_multiplier", "n_epochs", "beta", "lora_r", "lora_alpha",
             "lora_dropout", "target_modules", "warmup_ratio", "n_checkpoints", "n_evals", "train_on_inputs")
IGNORED = {"integrations", "wandb_api_key", "wandb_project_name", "wandb_name", "wandb_base_url"}


def job_spec(body: CreateJob) -> dict[str, Any]:
    """{method: supervised|dpo, <SPEC_KEYS>...}: the request's training settings, checked and merged."""
    unknown = sorted(set(body.model_extra or {}) - IGNORED)
    if unknown:
        log.info("fine-tuning job request: ignoring unknown field(s) %s", ", ".join(unknown))
    if body.lora is False:
        raise invalid_request("Full fine-tuning (lora: false) is not offered by this server: a job's result is "
                              "served as a LoRA adapter on the loaded base model. Use lora: true, or run "
                              "`lathe sft sft.method=full` offline.", "lora")
    if body.suffix is not None and not SUFFIX.match(body.suffix):
        raise invalid_request(f"suffix {body.suffix!r}: use 1-64 letters, digits, '-' or '_'.", "suffix")
    method = _method(body)
    spec: dict[str, Any] = {"method": method, **{key: None for key in SPEC_KEYS}}
    sources: dict[str, str] = {}

    def put(key: str, value: Any, param: str) -> None:
        if value is None or value == "auto":
            return
        if spec[key] is not None and spec[key] != value:
            raise invalid_request(f"{param} = {value!r} contradicts {sources[key]} = {spec[key]!r}; give it once.",
                                  param)
        spec[key], sources[key] = value, param

    for prefix, params in (("method." + method + ".hyperparameters", _method_hyperparameters(body, method)),
                           ("hyperparameters", body.hyperparameters)):
        if params is not None:
            for key in ("batch_size", "learning_rate_multiplier", "n_epochs", "beta"):
                put(key, getattr(params, key), f"{prefix}.{key}")
    put("n_epochs", body.n_epochs, "n_epochs")
    put("learning_rate", body.learning_rate, "learning_rate")
    put("batch_size", None if body.batch_size == "max" else body.batch_size, "batch_size")
    put("lora_r", body.lora_r, "lora_r")
    put("lora_alpha", body.lora_alpha, "lora_alpha")
    put("lora_dropout", body.lora_dropout, "lora_dropout")
    put("target_modules", _modules(body.lora_trainable_modules), "lora_trainable_modules")
    put("warmup_ratio", body.warmup_ratio, "warmup_ratio")
    put("n_checkpoints", body.n_checkpoints, "n_checkpoints")
    put("n_evals", body.n_evals or None, "n_evals")
    if spec["n_evals"] and not body.validation_file:
        raise invalid_request("n_evals needs a validation_file: the validation loss is measured on it.", "n_evals")
    put("train_on_inputs", body.train_on_inputs, "train_on_inputs")
    if body.training_method is not None:
        put("beta", body.training_method.dpo_beta, "training_method.dpo_beta")
    if spec["learning_rate"] is not None and spec["learning_rate_multiplier"] is not None:
        raise invalid_request("Give learning_rate (Together) or learning_rate_multiplier (OpenAI), not both.",
                              "learning_rate")
    if spec["beta"] is not None and method != "dpo":
        raise invalid_request("beta applies to DPO jobs only (method.type: dpo).", sources["beta"])
    return spec


def _method(body: CreateJob) -> str:
    openai = body.method.type if body.method is not None else None
    together = {"sft": "supervised", "dpo": "dpo"}.get(body.training_method.method) if body.training_method else None
    if openai == "reinforcement":
        raise invalid_request("method.type 'reinforcement' is not offered by this server; use 'supervised' or 'dpo'.",
                              "method.type")
    if openai and together and openai != together:
        raise invalid_request(f"method.type {openai!r} contradicts training_method.method "
                              f"{body.training_method.method!r}.", "training_method.method")
    return openai or together or "supervised"


def _method_hyperparameters(body: CreateJob, method: str) -> Hyperparameters | None:
    config = getattr(body.method, method, None) if body.method is not None else None
    return config.hyperparameters if config is not None else None


def _modules(value: str | list[str] | None) -> str | list[str] | None:
    """Together sends `all-linear` or a comma-separated list of module names."""
    if value is None or isinstance(value, list):
        return value
    value = value.strip()
    return value if value == "all-linear" else [m.strip() for m in value.split(",") if m.strip()]
