"""`lathe plan`: will this recipe's training fit on these GPUs, and if not, what to change.

    lathe plan --recipe recipes/llama-3.1-8b-lora.yaml --gpus 8xH100-80GB

Offline and instant: the model's shape comes from a local config.json (model.id is a directory) or
from the table below; nothing is downloaded and no model is built. For each enabled training stage
(sft, preference, rl) it estimates per-GPU memory = model states + activations (+ logits, + the KV
cache of RL sampling) and CPU memory per node, compares them with the GPU, and when a stage does not
fit it tries single changes (activation checkpointing, a smaller micro-batch, ZeRO-3, offload, QLoRA,
more GPUs) and prints the recipe overrides of those that fit.

The numbers are estimates for planning, not promises: allocator fragmentation, kernels' workspaces and
framework buffers vary, so a stage only "fits" under 90% of the GPU's memory less 1 GiB.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from recipes.errors import LatheError
from recipes.schema import EMBEDDED_DEFAULT, Recipe, TrainConfig
from recipes.stages import TRAINING

GIB = 2**30

# config.json essentials of the models the shipped recipes name, copied from each model's config.json on
# the Hugging Face Hub (meta-llama/Llama-3.1-8B-Instruct, codellama/CodeLlama-13b-Instruct-hf,
# mistralai/Mistral-Nemo-Instruct-2407, Qwen/Qwen2.5-14B-Instruct, openai/gpt-oss-20b) and, for the
# embedded default, from the SmolLM2-135M-Instruct GGUF's metadata. Kept here so `lathe plan` works
# offline; a local model directory's own config.json always wins.
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "meta-llama/llama-3.1-8b-instruct": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False),
    "codellama/codellama-13b-instruct-hf": dict(
        model_type="llama", hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
        num_key_value_heads=40, vocab_size=32016, tie_word_embeddings=False),
    "mistralai/mistral-nemo-instruct-2407": dict(
        model_type="mistral", hidden_size=5120, intermediate_size=14336, num_hidden_layers=40, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=131072, tie_word_embeddings=False),
    "qwen/qwen2.5-14b-instruct": dict(
        model_type="qwen2", hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
        num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
    "openai/gpt-oss-20b": dict(
        model_type="gpt_oss", hidden_size=2880, intermediate_size=2880, num_hidden_layers=24, num_attention_heads=64,
        num_key_value_heads=8, head_dim=64, vocab_size=201088, tie_word_embeddings=False, attention_bias=True,
        num_local_experts=32, num_experts_per_tok=4),
    EMBEDDED_DEFAULT: dict(
        model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
}
# The base (non-instruct) checkpoints share their instruct sibling's shape.
ALIASES = {"meta-llama/llama-3.1-8b": "meta-llama/llama-3.1-8b-instruct",
           "codellama/codellama-13b-hf": "codellama/codellama-13b-instruct-hf",
           "mistralai/mistral-nemo-base-2407": "mistralai/mistral-nemo-instruct-2407",
           "qwen/qwen2.5-14b": "qwen/qwen2.5-14b-instruct"}

# Memory of the GPU models people name, in GiB (a name ending in -<N>GB needs no entry).
GPU_MEMORY_GIB = {"H100": 80, "H200": 141, "A100": 80, "L40S": 48, "L40": 48, "A10G": 24, "A10": 24, "L4": 24,
                  "RTX4090": 24, "A6000": 48, "V100": 32, "B200": 180}

NF4_BYTES = 4.127 / 8  # 4-bit NF4 + double-quantised absmax constants (QLoRA paper, 0.127 bits/param)
LOGIT_BYTES = 8        # per logit: the 16-bit logits, their float32 copy in the loss, the 16-bit gradient


# ---------------------------------------------------------------- the model's shape

@dataclass(frozen=True)
class ModelShape:
    name: str
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool
    o_bias: bool
    experts: int = 0            # 0: a dense MLP
    experts_per_token: int = 0

    @classmethod
    def from_config(cls, name: str, cfg: dict[str, Any]) -> ModelShape:
        try:
            hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
            model_type = cfg.get("model_type", "llama")
            attention_bias = bool(cfg.get("attention_bias", model_type == "qwen2"))
            return cls(name=name, model_type=model_type, hidden=hidden, layers=int(cfg["num_hidden_layers"]),
                       heads=heads, kv_heads=int(cfg.get("num_key_value_heads") or heads),
                       head_dim=int(cfg.get("head_dim") or hidden // heads),
                       intermediate=int(cfg["intermediate_size"]), vocab=int(cfg["vocab_size"]),
                       tied=bool(cfg.get("tie_word_embeddings", False)),
                       qkv_bias=attention_bias, o_bias=attention_bias and model_type != "qwen2",
                       experts=int(cfg.get("num_local_experts") or 0),
                       experts_per_token=int(cfg.get("num_experts_per_tok") or cfg.get("experts_per_token") or 0))
        except KeyError as exc:
            raise LatheError(f"{name}: config.json lacks {exc.args[0]}, which the planner needs") from None

    def linears(self) -> list[tuple[str, int, int, bool]]:
        """The nn.Linear modules of one decoder layer as (name, in, out, bias): what LoRA can target."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = [("q_proj", h, q, self.qkv_bias), ("k_proj", h, kv, self.qkv_bias),
                     ("v_proj", h, kv, self.qkv_bias), ("o_proj", q, h, self.o_bias)]
        if self.experts and self.model_type == "gpt_oss":
            return attention  # its router and experts are fused parameters, not nn.Linear
        if self.experts:  # Mixtral-style: a linear router, experts counted in expert_params
            return attention + [("gate", h, self.experts, False)]
        i = self.intermediate
        return attention + [("gate_proj", h, i, False), ("up_proj", h, i, False), ("down_proj", i, h, False)]

    def expert_params(self) -> int:
        """Per layer: the experts' fused weights (and gpt-oss's biases and router), outside `linears`."""
        if not self.experts:
            return 0
        h, i, e = self.hidden, self.intermediate, self.experts
        if self.model_type == "gpt_oss":  # gate_up (E,h,2i)+bias, down (E,i,h)+bias, router (E,h)+bias
            return e * (h * 2 * i + 2 * i + i * h + h) + e * h + e
        return e * 3 * h * i

    def layer_params(self) -> int:
        linear = sum(a * b + (b if bias else 0) for _, a, b, bias in self.linears())
        sinks = self.heads if self.model_type == "gpt_oss" else 0  # learned attention sinks
        return linear + self.expert_params() + sinks + 2 * self.hidden  # two RMSNorms

    def total_params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * self.layer_params() + self.hidden

    def largest_layer_params(self) -> int:
        """The biggest single module (DeepSpeed's `largest_layer_params`: the parameters ZeRO-3 gathers at once)."""
        sizes = [self.vocab * self.hidden] + [a * b + (b if bias else 0) for _, a, b, bias in self.linears()]
        if self.model_type == "gpt_oss" and self.experts:
            h, i, e = self.hidden, self.intermediate, self.experts
            sizes.append(e * (h * 2 * i + 2 * i + i * h + h))
        return max(sizes)

    def linear_weight_params(self) -> int:
        """Weights bitsandbytes quantises for QLoRA: the decoder layers' nn.Linear weights."""
        return self.layers * sum(a * b for _, a, b, _ in self.linears())

    def lora_params(self, r: int, targets: list[str] | str, dora: bool = False) -> int:
        """Trainable adapter parameters: r × (in + out) per targeted Linear (+ a magnitude vector with DoRA).
        `all-linear` is every decoder Linear (PEFT excludes the output layer)."""
        chosen = [(n, a, b) for n, a, b, _ in self.linears() if targets == "all-linear" or n in targets]
        if self.experts and targets == "all-linear":
            chosen = [(n, a, b) for n, a, b in chosen if n != "gate"]  # PEFT skips MoE routers too
        per_layer = sum(r * (a + b) + (b if dora else 0) for _, a, b in chosen)
        return self.layers * per_layer


def model_shape(recipe: Recipe) -> ModelShape:
    model_id = recipe.model.id
    local = Path(model_id) / "config.json"
    if local.is_file():
        return ModelShape.from_config(model_id, json.loads(local.read_text()))
    key = ALIASES.get(model_id.lower(), model_id.lower())
    if key in KNOWN_CONFIGS:
        return ModelShape.from_config(model_id, KNOWN_CONFIGS[key])
    known = ", ".join(sorted(KNOWN_CONFIGS))
    raise LatheError(f"model.id: no config.json for '{model_id}' (not a local directory, not in the planner's "
                     f"table: {known}); point model.id at a local copy with its config.json")


# ---------------------------------------------------------------- hardware and ZeRO

@dataclass(frozen=True)
class Hardware:
    gpus_per_node: int
    nodes: int
    gpu: str
    gpu_gib: float

    @property
    def count(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def budget_gib(self) -> float:
        """What a stage may use: 90% of the GPU (fragmentation, workspaces) less 1 GiB (CUDA context, NCCL)."""
        return 0.9 * self.gpu_gib - 1.0

    def label(self) -> str:
        return f"{self.count}x{self.gpu}"


def parse_gpus(text: str, recipe: Recipe) -> Hardware:
    """`8xH100-80GB`, `16xA100-40GB`, `H100` (one). Counts the recipe's layout splits by node; else ≤ 8 per node."""
    match = re.fullmatch(r"(?:(\d+)\s*[xX×]\s*)?([A-Za-z0-9_.]+?)(?:-(\d+(?:\.\d+)?)\s*GB)?", text.strip())
    if not match:
        raise LatheError(f"--gpus '{text}': expected COUNTxMODEL such as 8xH100-80GB or 4xA100-40GB")
    count, name, memory = int(match.group(1) or 1), match.group(2), match.group(3)
    if count < 1:
        raise LatheError(f"--gpus '{text}': the count must be at least 1")
    if memory is None:
        memory = GPU_MEMORY_GIB.get(name.upper())
        if memory is None:
            raise LatheError(f"--gpus '{text}': unknown GPU '{name}'; give its memory as {name}-<N>GB "
                             f"(known: {', '.join(sorted(GPU_MEMORY_GIB))})")
    dist = recipe.distributed
    if count == dist.gpus_per_node * dist.nodes:
        per_node, nodes = dist.gpus_per_node, dist.nodes
    else:
        per_node = min(count, 8)
        nodes = math.ceil(count / per_node)
        if per_node * nodes != count:
            raise LatheError(f"--gpus '{text}': {count} GPUs do not split into equal nodes of up to 8")
    label = name if match.group(3) is None else f"{name}-{match.group(3)}GB"
    return Hardware(per_node, nodes, label, float(memory))


@dataclass(frozen=True)
class Zero:
    stage: int = 0                # 0: no DeepSpeed (one process, or DDP: every GPU holds everything)
    offload_optimizer: bool = False
    offload_params: bool = False

    def label(self, processes: int = 2) -> str:
        if self.stage == 0:
            return "no ZeRO (DDP)" if processes > 1 else "no ZeRO, one process"
        offload = [n for n, on in (("optimizer", self.offload_optimizer), ("params", self.offload_params)) if on]
        return f"ZeRO-{self.stage}" + (f" + offload {'/'.join(offload)}" if offload else "")


def zero_from_config(config: dict[str, Any] | None) -> Zero:
    if not config:
        return Zero()
    zero = config.get("zero_optimization") or {}

    def offloaded(key: str) -> bool:
        return str((zero.get(key) or {}).get("device", "none")).lower() in ("cpu", "nvme")

    return Zero(int(zero.get("stage", 0)), offloaded("offload_optimizer"), offloaded("offload_param"))


# ---------------------------------------------------------------- DeepSpeed's model-state formulas

def zero2_model_states(total_params: int, gpus_per_node: int, nodes: int, cpu_offload: bool,
                       buffer_factor: float = 1.5) -> tuple[int, int]:
    """(cpu bytes per node, gpu bytes) — DeepSpeed's `estimate_zero2_model_states_mem_needs`
    (deepspeed/runtime/zero/stage_1_and_2.py, documented in "Memory Requirements" of the ZeRO docs):
    2 bytes of 16-bit params per GPU plus 18 bytes/param (16-bit and 32-bit grads, 32-bit params,
    Adam's two moments) sharded over all GPUs, or moved to CPU with offload."""
    total_gpus = gpus_per_node * nodes
    if cpu_offload:
        return int(total_params * max(4 * total_gpus, 16) * buffer_factor), 2 * total_params
    return int(total_params * 4 * gpus_per_node * buffer_factor), 2 * total_params + int(18 * total_params / total_gpus)


def zero3_model_states(total_params: int, largest_layer_params: int, gpus_per_node: int, nodes: int,
                       cpu_offload: bool, cpu_offload_params: bool, zero_init: bool = True,
                       buffer_factor: float = 1.5) -> tuple[int, int]:
    """(cpu bytes per node, gpu bytes) — DeepSpeed's `estimate_zero3_model_states_mem_needs`
    (deepspeed/runtime/zero/stage3.py): every state sharded over all GPUs (18 bytes/param, or 2 with the
    optimizer offloaded, 0 with params offloaded too) plus the largest layer gathered whole (4 bytes/param)."""
    total_gpus = gpus_per_node * nodes
    gpus_factor = 1 / nodes
    largest = 4 * largest_layer_params
    if cpu_offload:
        if cpu_offload_params:
            gpu = largest
            cpu = total_params * (18 * gpus_factor if zero_init else max(4 * gpus_per_node, 18 * gpus_factor))
        else:
            gpu = largest + int(2 * total_params / total_gpus)
            cpu = total_params * (16 * gpus_factor if zero_init else max(4 * gpus_per_node, 16 * gpus_factor))
        return int(cpu * buffer_factor), gpu
    gpu = largest + int(18 * total_params / total_gpus)
    cpu = (largest_layer_params if zero_init else total_params) * 4 * gpus_per_node * buffer_factor
    return int(cpu), gpu


def trainable_states(params: int, largest: int, hw: Hardware, zero: Zero) -> tuple[int, int]:
    """(cpu per node, gpu) bytes for the trainable parameters under `zero`. Without ZeRO, each GPU holds
    everything: the ZeRO-2 formula over a single shard (20 bytes/param, mixed-precision Adam)."""
    if zero.stage == 3:
        return zero3_model_states(params, largest, hw.gpus_per_node, hw.nodes, zero.offload_optimizer,
                                  zero.offload_params)
    if zero.stage in (1, 2):  # ZeRO-1 shards a little less than ZeRO-2; planned as ZeRO-2
        return zero2_model_states(params, hw.gpus_per_node, hw.nodes, zero.offload_optimizer)
    cpu, gpu = zero2_model_states(params, 1, 1, cpu_offload=False)
    return hw.gpus_per_node * 2 * params, gpu  # CPU: each process loads its copy before moving it to the GPU


# ---------------------------------------------------------------- one stage's estimate

@dataclass(frozen=True)
class Workload:
    """What one training stage runs per micro-batch."""
    stage: str
    method: str                 # lora | qlora | full
    batch_size: int
    grad_accum: int
    seq_len: int
    checkpointing: bool
    sequences_per_row: int = 1  # DPO forwards chosen and rejected together
    lora_r: int = 16
    lora_targets: list[str] | str = "all-linear"
    lora_dora: bool = False
    kv_cache_rows: int = 0      # RL: completions sampled per micro-batch (their KV cache)


def workload(stage: str, cfg: TrainConfig) -> Workload:
    seq, per_row, kv_rows = cfg.max_seq_length, 1, 0
    if stage == "preference":
        per_row = 2
    if stage == "rl":
        seq = cfg.max_seq_length + cfg.max_completion_length  # prompt + sampled completion
        kv_rows = cfg.batch_size
    return Workload(stage, cfg.method, cfg.batch_size, cfg.grad_accum, seq, cfg.gradient_checkpointing, per_row,
                    cfg.lora.r, cfg.lora.target_modules, cfg.lora.use_dora, kv_rows)


def activation_bytes(shape: ModelShape, work: Workload) -> dict[str, int]:
    """Activation memory per GPU (16-bit), after Korthikanti et al. 2022, "Reducing Activation
    Recomputation in Large Transformer Models" (arXiv:2205.05198), Eq. 1: s·b·h·(34 + 5·a·s/h) bytes per
    layer. The 5·a·s/h term is the attention-score matrix, which SDPA / flash attention never stores, so it
    is dropped. With full activation checkpointing (Sec. 4) only each layer's input stays, 2·s·b·h bytes
    per layer, plus one layer's full set while it is recomputed. The output layer is not in that formula
    and dominates for 128k+ vocabularies: s·b·V logits × LOGIT_BYTES."""
    s, b, h = work.seq_len, work.batch_size * work.sequences_per_row, shape.hidden
    per_layer = 34 * s * b * h
    layers = (shape.layers * 2 * s * b * h + per_layer) if work.checkpointing else shape.layers * per_layer
    out = {"activations": layers, "logits": s * b * shape.vocab * LOGIT_BYTES}
    if work.kv_cache_rows:  # sampling: keys and values of every layer for every completion, 16-bit
        out["kv_cache"] = 2 * 2 * shape.layers * shape.kv_heads * shape.head_dim * s * work.kv_cache_rows
    return out


def model_state_bytes(shape: ModelShape, work: Workload, hw: Hardware, zero: Zero) -> tuple[dict[str, int], int]:
    """({part: gpu bytes}, cpu bytes per node)."""
    total, largest = shape.total_params(), shape.largest_layer_params()
    if work.method == "full":
        cpu, gpu = trainable_states(total, largest, hw, zero)
        return {"model_states": gpu}, cpu
    # LoRA / QLoRA: a frozen base (16-bit, or NF4 for the decoder Linears) + small trainable adapters.
    quantized = shape.linear_weight_params() if work.method == "qlora" else 0
    base = int(quantized * NF4_BYTES + (total - quantized) * 2)
    adapter = shape.lora_params(work.lora_r, work.lora_targets, work.lora_dora)
    adapter_cpu, adapter_gpu = trainable_states(adapter, 0, hw, zero)
    if zero.stage == 3 and zero.offload_params:
        base_gpu, base_cpu = 2 * largest, base // hw.nodes
    elif zero.stage == 3:  # frozen params are partitioned too; one layer is gathered at a time
        base_gpu, base_cpu = base // hw.count + 2 * largest, 2 * largest * hw.gpus_per_node
    else:
        base_gpu, base_cpu = base, base * hw.gpus_per_node  # each process loads the base before moving it
    return {"base_weights": base_gpu, "adapter_states": adapter_gpu}, int(base_cpu + adapter_cpu)


@dataclass
class Estimate:
    per_gpu_gib: dict[str, float]
    cpu_gib: float
    total_gib: float


def estimate(shape: ModelShape, work: Workload, hw: Hardware, zero: Zero) -> Estimate:
    states, cpu = model_state_bytes(shape, work, hw, zero)
    parts = {**states, **activation_bytes(shape, work)}
    per_gpu = {k: round(v / GIB, 2) for k, v in parts.items()}
    return Estimate(per_gpu, round(cpu / GIB, 1), round(sum(parts.values()) / GIB, 2))


# ---------------------------------------------------------------- the plan

@dataclass
class Suggestion:
    change: str
    overrides: list[str]
    total_gib: float
    fits: bool


@dataclass
class StagePlan:
    stage: str
    method: str
    zero: str
    per_gpu_gib: dict[str, float]
    total_gib: float
    cpu_gib: float
    fits: bool
    suggestions: list[Suggestion] = field(default_factory=list)


@dataclass
class PlanResult:
    model: str
    params: int
    largest_layer_params: int
    gpus: str
    gpu_gib: float
    budget_gib: float
    cpu_mem_gb: float | None
    stages: list[StagePlan]

    @property
    def fits(self) -> bool:
        return all(stage.fits for stage in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fits": self.fits}

    def text(self) -> str:
        lines = [f"model {self.model}: {self.params / 1e9:.2f}B parameters (largest layer "
                 f"{self.largest_layer_params / 1e6:.0f}M)",
                 f"GPUs {self.gpus}: {self.gpu_gib:g} GiB each, planning budget {self.budget_gib:.1f} GiB"
                 + (f"; CPU {self.cpu_mem_gb:g} GB per node" if self.cpu_mem_gb else "")]
        for st in self.stages:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in st.per_gpu_gib.items())
            verdict = "fits" if st.fits else "DOES NOT FIT"
            lines.append(f"{st.stage} ({st.method}, {st.zero}): {st.total_gib:.1f} GiB per GPU [{parts}], "
                         f"CPU {st.cpu_gib:.1f} GiB per node — {verdict}")
            for sug in st.suggestions:
                mark = "fits" if sug.fits else "still too big"
                lines.append(f"  try {sug.change}: {sug.total_gib:.1f} GiB per GPU, {mark}"
                             + (f"  ({' '.join(sug.overrides)})" if sug.overrides else ""))
        lines.append("verdict: " + ("fits" if self.fits else "does not fit — see the suggestions above"))
        return "\n".join(lines)


def _fits(est: Estimate, hw: Hardware, cpu_mem_gb: float | None) -> bool:
    cpu_ok = cpu_mem_gb is None or est.cpu_gib * GIB <= cpu_mem_gb * 1e9
    return est.total_gib <= hw.budget_gib and cpu_ok


def suggestions(shape: ModelShape, work: Workload, hw: Hardware, zero: Zero,
                cpu_mem_gb: float | None) -> list[Suggestion]:
    """Changes to the recipe, each estimated on its own (then all together); the ones that fit first."""
    stage = work.stage
    options: list[tuple[str, list[str], Workload, Hardware, Zero]] = []
    if not work.checkpointing:
        options.append(("activation checkpointing", [f"{stage}.gradient_checkpointing=true"],
                        replace(work, checkpointing=True), hw, zero))
    for batch in sorted({max(1, work.batch_size // 2), 1} - {work.batch_size}, reverse=True):
        options.append((f"micro-batch {batch}", _batch_overrides(work, batch), _with_batch(work, batch), hw, zero))
    if zero.stage < 3:
        options.append(("ZeRO-3", ["distributed.deepspeed=zero3"], work, hw, Zero(3)))
    if not (zero.offload_optimizer and zero.offload_params):
        options.append(("ZeRO-3 with CPU offload", ["distributed.deepspeed=zero3_offload"], work, hw, Zero(3, True, True)))
    if work.method != "qlora":
        options.append(("QLoRA (4-bit base)", [f"{stage}.method=qlora"], replace(work, method="qlora"), hw, zero))
    more = _more_gpus(shape, work, hw, zero, cpu_mem_gb)
    if more:
        options.append(more)
    everything = replace(_with_batch(work, 1), checkpointing=True, method="qlora" if work.method == "lora" else work.method)
    overrides = ([f"{stage}.gradient_checkpointing=true"] + _batch_overrides(work, 1)
                 + ["distributed.deepspeed=zero3_offload"] + ([f"{stage}.method=qlora"] if work.method == "lora" else []))
    options.append(("all of these together" if work.method == "lora" else "all of these together (but QLoRA)",
                    overrides, everything, hw, Zero(3, True, True)))
    found = []
    for change, sets, w, h, z in options:
        est = estimate(shape, w, h, z)
        found.append(Suggestion(change, sets, est.total_gib, _fits(est, h, cpu_mem_gb)))
    return sorted(found, key=lambda s: not s.fits)


def _with_batch(work: Workload, batch: int) -> Workload:
    accum = work.grad_accum * math.ceil(work.batch_size / batch)
    return replace(work, batch_size=batch, grad_accum=accum, kv_cache_rows=batch if work.kv_cache_rows else 0)


def _batch_overrides(work: Workload, batch: int) -> list[str]:
    """A smaller micro-batch with more accumulation keeps the effective batch."""
    if batch == work.batch_size:
        return []
    return [f"{work.stage}.batch_size={batch}", f"{work.stage}.grad_accum={_with_batch(work, batch).grad_accum}"]


def _more_gpus(shape: ModelShape, work: Workload, hw: Hardware, zero: Zero, cpu_mem_gb: float | None):
    """The fewest GPUs of the same kind (up to 128, 8 per node) that fit with ZeRO-3: only sharding
    makes more GPUs hold less each."""
    sharded = zero if zero.stage == 3 else Zero(3)
    for count in (2, 4, 8, 16, 32, 64, 128):
        if count <= hw.count:
            continue
        per_node = min(count, 8)
        bigger = replace(hw, gpus_per_node=per_node, nodes=count // per_node)
        if _fits(estimate(shape, work, bigger, sharded), bigger, cpu_mem_gb):
            sets = [f"distributed.gpus_per_node={per_node}", f"distributed.nodes={bigger.nodes}"]
            sets += [] if zero.stage == 3 else ["distributed.deepspeed=zero3"]
            return f"{bigger.label()} with {sharded.label()}", sets, work, bigger, sharded
    return None


def plan(recipe: Recipe, gpus: str | None = None, cpu_mem_gb: float | None = None) -> PlanResult:
    """Estimate memory for each enabled training stage of `recipe` on `gpus` (default: the recipe's own
    distributed section, e.g. 8xH100-80GB). `cpu_mem_gb`: CPU memory per node to check against."""
    from pipelines.launch import deepspeed_config

    dist = recipe.distributed
    hw = parse_gpus(gpus or f"{dist.gpus_per_node * dist.nodes}x{dist.gpu}", recipe)
    zero = zero_from_config(deepspeed_config(recipe))
    shape = model_shape(recipe)
    stages = []
    for name in TRAINING:
        cfg = getattr(recipe, name)
        if not cfg.enabled:
            continue
        work = workload(name, cfg)
        est = estimate(shape, work, hw, zero)
        fits = _fits(est, hw, cpu_mem_gb)
        stage = StagePlan(name, cfg.method, zero.label(hw.count), est.per_gpu_gib, est.total_gib, est.cpu_gib, fits)
        if not fits:
            stage.suggestions = suggestions(shape, work, hw, zero, cpu_mem_gb)
        stages.append(stage)
    return PlanResult(shape.name, shape.total_params(), shape.largest_layer_params(), hw.label(), hw.gpu_gib,
                      round(hw.budget_gib, 1), cpu_mem_gb, stages)


def main(recipe: Recipe, args) -> int:
    """Print the plan; exit 0 when every stage fits, 1 when one does not."""
    result = plan(recipe, getattr(args, "gpus", None), getattr(args, "cpu_mem_gb", None))
    print(json.dumps(result.to_dict(), indent=2) if getattr(args, "json", False) else result.text())
    return 0 if result.fits else 1
