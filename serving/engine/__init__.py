"""Engines: the `Engine` Protocol and the factory that picks an implementation (`settings.engine`).

Only `base` is imported eagerly; an implementation (and torch, or vllm, with it) loads when a server
starts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from serving.engine.base import Engine, GeneratedToken, GenerationStream, Guide, SamplingParams, TokenLogprob

if TYPE_CHECKING:
    from serving.settings import ServerSettings

log = logging.getLogger("lathe.serving")

__all__ = ["Engine", "GeneratedToken", "GenerationStream", "Guide", "SamplingParams", "TokenLogprob", "adapters_for_base",
           "create_engine"]


def create_engine(settings: "ServerSettings", model_dir: Path | None = None,
                  adapters: dict[str, Path] | None = None) -> Engine:
    """The one place that chooses the engine. `model_dir` and `adapters` override the settings' (a hot swap)."""
    model_dir = Path(model_dir or settings.model_dir)
    adapters = settings.adapters if adapters is None else adapters
    require_safetensors(model_dir, adapters)
    if settings.engine == "vllm":
        from serving.engine.vllm_engine import VLLMEngine

        return VLLMEngine(model_dir, dtype=settings.dtype, max_model_len=settings.max_model_len,
                          max_num_seqs=settings.max_batch_size,
                          gpu_memory_utilization=settings.gpu_memory_utilization)
    if settings.engine == "continuous":
        from serving.engine.continuous_engine import ContinuousBatchingEngine

        return ContinuousBatchingEngine(model_dir, device=settings.device, dtype=settings.dtype,
                                        torch_threads=settings.torch_threads or batched_threads(),
                                        max_model_len=settings.max_model_len, max_batch_size=settings.max_batch_size)
    from serving.engine.transformers_engine import TransformersEngine

    return TransformersEngine(model_dir, device=settings.device, dtype=settings.dtype,
                              torch_threads=settings.torch_threads or 1, max_model_len=settings.max_model_len,
                              adapters=adapters)


SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def require_safetensors(model_dir: Path, adapters: dict[str, Path]) -> None:
    """Only safetensors are loaded: pickled weights (pytorch_model.bin, adapter_model.bin) can run code when
    unpickled. transformers and PEFT fall back to them when their safetensors file is missing, so check first."""
    from recipes import LatheError

    if not any((model_dir / name).is_file() for name in SAFE_WEIGHTS):
        pickled = sorted(p.name for p in model_dir.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise LatheError(f"{model_dir}: no safetensors weights ({' or '.join(SAFE_WEIGHTS)}); found "
                         f"{', '.join(pickled) or 'no weights'}. The server loads only safetensors (pickled weights "
                         "can run code when loaded): convert with save_pretrained(..., safe_serialization=True).")
    for name, adapter_dir in adapters.items():
        if not (Path(adapter_dir) / "adapter_model.safetensors").is_file():
            raise LatheError(f"adapter '{name}': {adapter_dir} has no adapter_model.safetensors (only safetensors "
                             "are loaded: pickled weights can run code when loaded).")


def adapters_for_base(adapters: dict[str, Path], model_dir: Path) -> dict[str, Path]:
    """The adapters that fit `model_dir`. An adapter whose `base_model_name_or_path` (PEFT's record of the
    model it was trained on) is a local directory (an absolute path, even one deleted since) fits only
    that directory: after a hot swap to another version, an adapter trained on the previous one would load
    without error and answer with a model nobody trained. A hub id or an unreadable config cannot be
    checked and is kept."""
    import json

    fitting = {}
    for name, adapter_dir in adapters.items():
        try:
            base = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (OSError, ValueError):
            base = None
        local = base and (Path(base).is_absolute() or Path(base).is_dir())
        if local and Path(base).resolve() != Path(model_dir).resolve():
            log.warning("adapter '%s' is not served with %s: it was trained on %s", name, model_dir, base)
            continue
        fitting[name] = adapter_dir
    return fitting


def batched_threads() -> int:
    """torch threads for batched CPU decoding: half the usable cores (the rest for the event loop,
    tokenizing and whoever shares the machine; hyperthreads count twice). On 2 shared cores that is 1:
    measured here, 1 thread ran 8 streams ~40x faster than 2 under contention."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)
