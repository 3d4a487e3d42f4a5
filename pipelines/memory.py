"""The memory model behind `lathe plan` (pipelines/plan.py): a model's shape, the hardware, ZeRO's sharding, and the
per-GPU bytes of model states, activations and logits for one training stage's workload.

Estimates for planning, not promises: allocator fragmentation, kernels' workspaces and framework buffers vary.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipes.errors import LatheError
from recipes.schema import EMBEDDED_DEFAULT, Recipe, TrainConfig

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
