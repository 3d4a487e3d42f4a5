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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pipelines.memory import (GIB, Estimate, Hardware, ModelShape, Workload, Zero, estimate, model_shape, parse_gpus,
                              workload, zero_from_config)
from recipes.schema import Recipe
from recipes.stages import TRAINING

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
