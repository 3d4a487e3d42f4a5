"""POST /v1/fine_tuning/jobs: OpenAI's request and Together's fields -> one JobSpec.

OpenAI: `model`, `training_file`, `validation_file`, `hyperparameters` (batch_size,
learning_rate_multiplier, n_epochs), `method` ({type: supervised|dpo, supervised|dpo: {hyperparameters}},
dpo adds `beta`), `suffix`, `seed`, `metadata`. Together: `n_epochs`, `learning_rate`, `batch_size`,
`lora`, `lora_r`, `lora_alpha`, `lora_dropout`, `lora_trainable_modules`, `training_type` ({type: Lora, the
same lora fields}), `warmup_ratio`, `lr_scheduler` ({lr_scheduler_type: linear|cosine, lr_scheduler_args:
{min_lr_ratio, num_cycles}}), `weight_decay`, `max_grad_norm`, `random_seed`, `from_checkpoint` (`<job id>`,
`<job id>:<step>` or the fine-tuned model's name: continue that job's adapter), `n_checkpoints`, `n_evals`
(validation loss that many times during training), `train_on_inputs`, `training_method` ({method: sft|dpo,
train_on_inputs, dpo_beta, rpo_alpha (the weight of TRL's `sft` loss beside `sigmoid`),
dpo_normalize_logratios_by_length (`sigmoid_norm`)}).

`training_type: {type: Full}` (or `lora: false`) trains every weight; the result is a whole model, served beside
the base model (serve.max_full_models, serving/model_pool.py).

Every field changes the run or is a 400 naming it and why: LoRA settings on a Full job, `from_checkpoint` with
Full, `simpo_gamma` and `dpo_reference_free` (not in TRL's DPOTrainer), Hugging Face
hub fields, a non-empty W&B integration, and any field neither API defines. A setting given twice with
different values (e.g. `n_epochs` and `hyperparameters.n_epochs`) is a 400 naming both; "auto" or absent means
"the base recipe's value".
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
    train_on_inputs: bool | Auto | None = None
    dpo_beta: float | None = Field(None, gt=0)
    rpo_alpha: float | None = Field(None, ge=0)
    dpo_normalize_logratios_by_length: bool | None = None
    simpo_gamma: float | None = None
    dpo_reference_free: bool | None = None


class TrainingType(_Open):
    """Together's `training_type`: {type: Lora, lora_r, …} or {type: Full}."""

    type: Literal["Lora", "Full", "lora", "full"]
    lora_r: int | None = Field(None, ge=1)
    lora_alpha: int | None = Field(None, ge=1)
    lora_dropout: float | None = Field(None, ge=0, lt=1)
    lora_trainable_modules: str | list[str] | None = None


class LrSchedulerArgs(_Open):
    min_lr_ratio: float | None = Field(None, ge=0, le=1)
    num_cycles: float | None = Field(None, gt=0)


class LrScheduler(_Open):
    """Together's `lr_scheduler`."""

    lr_scheduler_type: Literal["linear", "cosine"]
    lr_scheduler_args: LrSchedulerArgs | None = None


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
    training_type: TrainingType | None = None
    lr_scheduler: LrScheduler | None = None
    weight_decay: float | None = Field(None, ge=0)
    max_grad_norm: float | None = Field(None, ge=0)
    random_seed: int | None = Field(None, ge=0, lt=2**31)
    from_checkpoint: str | None = None


# Settings a JobSpec carries; None = the base recipe's value.
SPEC_KEYS = ("full", "from_checkpoint", "batch_size", "learning_rate", "learning_rate_multiplier", "n_epochs", "beta", "lora_r",
             "lora_alpha", "lora_dropout", "target_modules", "warmup_ratio", "n_checkpoints", "n_evals", "train_on_inputs",
             "lr_scheduler", "lr_scheduler_kwargs", "weight_decay", "max_grad_norm", "rpo_alpha", "length_normalized")
# Fields that change nothing a job trains (experiment trackers we do not send to): accepted when empty.
NOT_SENT = {"integrations", "wandb_api_key", "wandb_project_name", "wandb_name", "wandb_base_url"}
REFUSED = {
    "from_hf_model": "this server trains the model it serves; start `lathe serve --model <dir>` on that model",
    "hf_api_token": "this server does not download models", "hf_output_repo_name": "results stay in the registry",
    "hf_model_revision": "this server trains the model it serves",
}


def job_spec(body: CreateJob) -> dict[str, Any]:
    """{method: supervised|dpo, <SPEC_KEYS>...}: the request's training settings, checked and merged."""
    _refuse_unknown(body)
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
    if body.seed is not None and body.random_seed is not None and body.seed != body.random_seed:
        raise invalid_request(f"random_seed = {body.random_seed} contradicts seed = {body.seed}; give it once.",
                              "random_seed")
    put("n_epochs", body.n_epochs, "n_epochs")
    put("learning_rate", body.learning_rate, "learning_rate")
    put("batch_size", None if body.batch_size == "max" else body.batch_size, "batch_size")
    for holder, prefix in ((body, ""), (body.training_type, "training_type.")):
        if holder is None:
            continue
        put("lora_r", holder.lora_r, prefix + "lora_r")
        put("lora_alpha", holder.lora_alpha, prefix + "lora_alpha")
        put("lora_dropout", holder.lora_dropout, prefix + "lora_dropout")
        put("target_modules", _modules(holder.lora_trainable_modules), prefix + "lora_trainable_modules")
    if body.training_type is not None:
        put("full", body.training_type.type.lower() == "full", "training_type.type")
    if body.lora is not None and spec["full"] is not None and body.lora == spec["full"]:
        raise invalid_request(f"lora: {str(body.lora).lower()} contradicts training_type.type: "
                              f"{body.training_type.type}; give it once.", "lora")
    put("full", None if body.lora is None else not body.lora, "lora")
    lora_set = [key for key in ("lora_r", "lora_alpha", "lora_dropout", "target_modules") if spec[key] is not None]
    if spec["full"] and lora_set:
        raise invalid_request(f"{sources[lora_set[0]]} applies to LoRA training; this job is Full "
                              f"({sources['full']}). Drop one.", sources[lora_set[0]])
    put("weight_decay", body.weight_decay, "weight_decay")
    put("max_grad_norm", body.max_grad_norm, "max_grad_norm")
    if body.lr_scheduler is not None:
        name, kwargs = _scheduler(body.lr_scheduler)
        put("lr_scheduler", name, "lr_scheduler.lr_scheduler_type")
        put("lr_scheduler_kwargs", kwargs or None, "lr_scheduler.lr_scheduler_args")
    put("warmup_ratio", body.warmup_ratio, "warmup_ratio")
    put("n_checkpoints", body.n_checkpoints, "n_checkpoints")
    put("n_evals", body.n_evals or None, "n_evals")
    if spec["n_evals"] and not body.validation_file:
        raise invalid_request("n_evals needs a validation_file: the validation loss is measured on it.", "n_evals")
    put("train_on_inputs", body.train_on_inputs, "train_on_inputs")
    if body.training_method is not None:
        tm = body.training_method
        put("train_on_inputs", tm.train_on_inputs, "training_method.train_on_inputs")
        put("beta", tm.dpo_beta, "training_method.dpo_beta")
        put("rpo_alpha", tm.rpo_alpha, "training_method.rpo_alpha")
        put("length_normalized", tm.dpo_normalize_logratios_by_length or None,
            "training_method.dpo_normalize_logratios_by_length")
        if tm.simpo_gamma is not None:
            raise invalid_request("simpo_gamma: SimPO is not a loss of TRL's DPOTrainer, which this server trains "
                                  "with; use rpo_alpha or dpo_normalize_logratios_by_length.",
                                  "training_method.simpo_gamma")
        if tm.dpo_reference_free:
            raise invalid_request("dpo_reference_free: TRL's DPOTrainer always uses the reference model (with LoRA, "
                                  "the base with the adapter off, at no extra memory); drop the field.",
                                  "training_method.dpo_reference_free")
        if method != "dpo" and (tm.rpo_alpha is not None or tm.dpo_normalize_logratios_by_length):
            raise invalid_request("rpo_alpha and dpo_normalize_logratios_by_length apply to DPO jobs only.",
                                  "training_method")
    if body.from_checkpoint is not None:
        spec["from_checkpoint"] = body.from_checkpoint.strip()
        if spec["full"]:
            raise invalid_request("from_checkpoint continues a LoRA job's adapter; a Full job starts from the served "
                                  f"base model ({sources['full']}). Drop one.", "from_checkpoint")
        fixed = [key for key in ("lora_r", "lora_alpha", "lora_dropout", "target_modules") if spec[key] is not None]
        if fixed:
            raise invalid_request(f"{sources[fixed[0]]}: a job continued from_checkpoint keeps that adapter's LoRA "
                                  "settings; drop it.", sources[fixed[0]])
    if spec["learning_rate"] is not None and spec["learning_rate_multiplier"] is not None:
        raise invalid_request("Give learning_rate (Together) or learning_rate_multiplier (OpenAI), not both.",
                              "learning_rate")
    if spec["beta"] is not None and method != "dpo":
        raise invalid_request("beta applies to DPO jobs only (method.type: dpo).", sources["beta"])
    return spec


def _refuse_unknown(body: CreateJob) -> None:
    """A field neither API defines, or one this server cannot honour, is a 400 naming it (OpenAI refuses
    unrecognised arguments too): a job never runs other than asked."""
    def refuse(prefix: str, model: BaseModel) -> None:
        for name, value in (model.model_extra or {}).items():
            if name in NOT_SENT and not value:
                continue
            why = REFUSED.get(name) or ("this server sends no run to an experiment tracker; drop it" if name in NOT_SENT
                                        else "not a field of OpenAI's or Together's fine-tuning API")
            raise invalid_request(f"Unsupported field {prefix + name!r}: {why}.", prefix + name)
        for name in type(model).model_fields:
            child = getattr(model, name)
            if isinstance(child, _Open):
                refuse(f"{prefix}{name}.", child)

    refuse("", body)


def _scheduler(value: LrScheduler) -> tuple[str, dict[str, float]]:
    """Together's scheduler → transformers' name and `lr_scheduler_kwargs`."""
    args = value.lr_scheduler_args or LrSchedulerArgs()
    if value.lr_scheduler_type == "linear":
        if args.min_lr_ratio:
            raise invalid_request("lr_scheduler linear decays to 0 in transformers; for a floor use cosine with "
                                  "min_lr_ratio.", "lr_scheduler.lr_scheduler_args.min_lr_ratio")
        if args.num_cycles is not None:
            raise invalid_request("num_cycles applies to the cosine scheduler only.",
                                  "lr_scheduler.lr_scheduler_args.num_cycles")
        return "linear", {}
    kwargs = {"num_cycles": args.num_cycles} if args.num_cycles is not None else {}
    if args.min_lr_ratio:
        return "cosine_with_min_lr", {**kwargs, "min_lr_rate": args.min_lr_ratio}
    return "cosine", kwargs


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
