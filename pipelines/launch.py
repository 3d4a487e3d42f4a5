"""Multi-process training: re-launch a training stage under deepspeed / torchrun / accelerate, and the
TrainingArguments fields that switch DeepSpeed on.

    distributed: {gpus_per_node: 8, launcher: deepspeed, deepspeed: zero3}

With such a recipe `lathe sft` re-executes itself as one process per GPU
(`deepspeed --num_gpus 8 --no_local_rank --module pipelines.cli sft ...`) and waits for them. The
launched processes see LOCAL_RANK / WORLD_SIZE in their environment, so they train instead of
launching again. Each builds its TrainingArguments with `deepspeed_args(recipe)`, which hands the
config file to the HF Trainer; its "auto" values are filled from the recipe (batch size, gradient
accumulation, clipping, bf16), so the recipe stays the single source of those numbers.

DeepSpeed configs live in recipes/deepspeed/: zero2.json, zero3.json (16-bit weights gathered on
save: the saved model is consolidated safetensors, never empty shards), zero3_offload.json (optimizer
and parameters in CPU memory; needs DeepSpeed's CPU Adam, which is JIT-compiled on first use).

On a machine without CUDA (tests, CI) the same path runs over gloo: TrainingArguments(use_cpu=True) is
required with DeepSpeed there (without it each rank silently trains on the same data, or the batch
size check fails), and OMP_NUM_THREADS=1 keeps the ranks from fighting over cores.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from recipes.errors import LatheError
from recipes.schema import Recipe

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
DEEPSPEED_DIR = RECIPES_DIR / "deepspeed"
ACCELERATE_DIR = RECIPES_DIR / "accelerate"
LAUNCH_ENV = ("LOCAL_RANK", "WORLD_SIZE")  # set by every launcher in the processes it starts


def world_size(recipe: Recipe) -> int:
    dist = recipe.distributed
    return dist.gpus_per_node * dist.nodes


def inside_launch() -> bool:
    """True in a process started by deepspeed/torchrun/accelerate."""
    return any(name in os.environ for name in LAUNCH_ENV)


def deepspeed_config_path(recipe: Recipe) -> Path | None:
    """distributed.deepspeed as a file: a name under recipes/deepspeed/ or a path to a JSON file."""
    name = recipe.distributed.deepspeed
    if not name:
        return None
    candidates = [Path(name), DEEPSPEED_DIR / name, DEEPSPEED_DIR / f"{name}.json"]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    known = ", ".join(sorted(p.stem for p in DEEPSPEED_DIR.glob("*.json")))
    raise LatheError(f"distributed.deepspeed: '{name}' is neither a file nor a config under recipes/deepspeed/ "
                     f"(known: {known})")


def deepspeed_config(recipe: Recipe) -> dict[str, Any] | None:
    path = deepspeed_config_path(recipe)
    if path is None:
        return None
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LatheError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); from distributed.deepspeed") from None
    if not isinstance(config, dict):
        raise LatheError(f"{path}: a DeepSpeed config is a JSON object; from distributed.deepspeed")
    return config


def zero_stage(recipe: Recipe) -> int:
    """ZeRO stage of the recipe's DeepSpeed config (0 without one)."""
    config = deepspeed_config(recipe) or {}
    return int(config.get("zero_optimization", {}).get("stage", 0))


def deepspeed_args(recipe: Recipe) -> dict[str, Any]:
    """TrainingArguments fields for the recipe's DeepSpeed config ({} without one). Call it before
    loading the model: with ZeRO-3 the arguments make from_pretrained load each rank's shard only.

    Without CUDA the process group is gloo (DeepSpeed's CPU default, ccl, has no PyPI wheel), and it is
    started here: with use_cpu=True the Trainer leaves the group to accelerate, so DeepSpeed's own
    communicator stays unset and ZeRO-3's zero.Init would see a world of one process
    ("train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size")."""
    path = deepspeed_config_path(recipe)
    if path is None:
        return {}
    import torch

    args: dict[str, Any] = {"deepspeed": str(path)}
    if not torch.cuda.is_available() and inside_launch():
        import deepspeed

        args["ddp_backend"] = "gloo"
        deepspeed.init_distributed(dist_backend="gloo")
    return args


def needs_launch(recipe: Recipe) -> bool:
    """Several processes, or DeepSpeed at all (a launcher sets up its process group even for one GPU)."""
    return world_size(recipe) > 1 or recipe.distributed.deepspeed is not None


def maybe_relaunch(stage: str, recipe: Recipe, argv: list[str] | None = None) -> bool:
    """When the recipe asks for a launcher and this process was not started by one, run `lathe <argv>`
    under it, wait, and return True (the caller then exits). `argv` is the command line after `lathe`
    (default: sys.argv[1:]). A failed launch raises LatheError with the exit code and the command.
    A disabled stage only writes its pass-through manifest: that needs one process, not a launch."""
    if not getattr(recipe, stage).enabled or not needs_launch(recipe) or inside_launch():
        return False
    argv = list(sys.argv[1:] if argv is None else argv)
    command = launch_command(recipe, argv)
    print(f"{stage}: launching {world_size(recipe)} processes: {shlex.join(command)}", flush=True)
    code = subprocess.call(command, env=launch_env())
    if code != 0:
        raise LatheError(f"{stage}: the {recipe.distributed.launcher} launch exited with code {code} "
                         f"(see the ranks' output above); command: {shlex.join(command)}")
    return True


def launch_env() -> dict[str, str]:
    env = dict(os.environ)
    # torchrun sets 1 by itself; the deepspeed launcher does not, and N ranks × all cores thrash.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def launch_command(recipe: Recipe, argv: list[str]) -> list[str]:
    """The launcher command line that runs `python -m pipelines.cli <argv>` once per process."""
    dist = recipe.distributed
    builders = {"deepspeed": _deepspeed_command, "torchrun": _torchrun_command, "accelerate": _accelerate_command}
    return builders[dist.launcher](recipe) + ["pipelines.cli", *argv]


def _deepspeed_command(recipe: Recipe) -> list[str]:
    dist = recipe.distributed
    # --no_local_rank: the launcher would otherwise append --local_rank=N, which `lathe` does not take
    # (the rank is in the LOCAL_RANK environment variable either way).
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(dist.gpus_per_node),
           "--master_port", str(dist.master_port), "--no_local_rank"]
    if dist.nodes > 1:
        if not dist.hostfile:
            raise LatheError("distributed.hostfile is required with launcher deepspeed and nodes > 1 "
                             "(one `hostname slots=N` line per node)")
        if not Path(dist.hostfile).is_file():
            raise LatheError(f"distributed.hostfile: {dist.hostfile} not found")
        cmd += ["--num_nodes", str(dist.nodes), "--hostfile", dist.hostfile]
        if dist.master_addr:
            cmd += ["--master_addr", dist.master_addr]
    return cmd + ["--module"]


def _node_rank_and_master(recipe: Recipe) -> tuple[str, str]:
    dist = recipe.distributed
    rank = os.environ.get("NODE_RANK")
    master = os.environ.get("MASTER_ADDR") or dist.master_addr
    if rank is None or not master:
        raise LatheError(f"launcher {dist.launcher} with nodes > 1: run the same command on every node with "
                         f"NODE_RANK=<0..{dist.nodes - 1}> and MASTER_ADDR (or distributed.master_addr) set, "
                         f"or use launcher deepspeed with a hostfile")
    return rank, master


def _torchrun_command(recipe: Recipe) -> list[str]:
    dist = recipe.distributed
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(dist.gpus_per_node),
           "--nnodes", str(dist.nodes), "--master_port", str(dist.master_port)]
    if dist.nodes > 1:
        rank, master = _node_rank_and_master(recipe)
        cmd += ["--node_rank", rank, "--master_addr", master]
    return cmd + ["-m"]


def _accelerate_command(recipe: Recipe) -> list[str]:
    dist = recipe.distributed
    ds_path = deepspeed_config_path(recipe)
    config = ACCELERATE_DIR / ("deepspeed.yaml" if ds_path else "multi_gpu.yaml")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
           "--num_processes", str(world_size(recipe)), "--num_machines", str(dist.nodes),
           "--main_process_port", str(dist.master_port)]
    if ds_path:
        cmd += ["--deepspeed_config_file", str(ds_path)]
    if dist.nodes > 1:
        rank, master = _node_rank_and_master(recipe)
        cmd += ["--machine_rank", rank, "--main_process_ip", master]
    return cmd + ["-m"]


def is_main_process() -> bool:
    """Rank 0 (or no launcher): the one process that writes manifests, merges and prints."""
    return os.environ.get("RANK", "0") == "0"


def end_zero3_init() -> None:
    """After training: make later from_pretrained calls (the adapter merge on rank 0) build whole models.
    The Trainer's ZeRO-3 config stays registered with transformers, so loading the base for the merge
    would start a sharded zero.Init that waits on the other ranks, which have already left."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def end_process_group() -> bool:
    """At the end of a launched stage, on every rank: wait for the others (rank 0 still writes the manifest
    and merges), then close the process group. A rank that just exits with the group open can abort in
    gloo's teardown ("terminate called without an active exception"), failing the whole launch.
    Returns whether this process was part of a launched (multi-process) run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        return True
    return False
