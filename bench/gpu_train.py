"""GPU training bench: LoRA SFT of a randomly initialised model with Llama-3.1-8B's shape, bf16,
packed sequences of 2048 tokens, on one GPU; reports tokens/s and MFU. Needs torch, transformers
and peft only (no TRL: the GPU image has none), and no network: the weights are random and the
tokens are random ids, which costs exactly what real ones cost.

    python -m bench.gpu_train --out train.json            # on the GPU (part of bench/gpu.sh)
    python -m bench.gpu_train --tiny --out train.json     # the same code path, tiny shape, on CPU

"Packed" here is llm-foundry's concatenate-and-chunk layout: every row is 2048 real tokens, no
padding, full causal attention over the row; that is the layout its MFU formula assumes.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

# Llama-3.1-8B (meta-llama/Llama-3.1-8B config.json): the shape is what costs time.
LLAMA_31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                   rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
                   rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 8192})
TINY = dict(vocab_size=1024, hidden_size=64, intermediate_size=224, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2)

# Dense bf16 tensor-core peak per GPU, as composer's SpeedMonitor (which llm-foundry uses for MFU)
# lists it in composer/callbacks/speed_monitor.py GPU_AVAILABLE_FLOPS: NVIDIA's datasheet figure with
# sparsity, halved. H200 has the H100 SXM's tensor cores and clocks (datasheet: 1,979 TFLOPS sparse).
PEAK_BF16_FLOPS = [("H100 PCIe", 1.513e15 / 2), ("H100 NVL", 1.671e15 / 2), ("H100", 1.979e15 / 2),
                   ("H200", 1.979e15 / 2), ("A100", 312e12)]

MFU_GOAL = 0.45


def llm_foundry_flops_per_batch(n_params: int, n_layers: int, d_model: int, batch_size: int, seq_len: int) -> float:
    """Training FLOPs of one batch, exactly llm-foundry's formula
    (llmfoundry/models/mpt/modeling_mpt.py, ComposerMPTCausalLM.flops_per_batch; the HF wrapper
    llmfoundry/models/hf/hf_causal_lm.py uses the same):

        params_flops_per_token = 2 * n_params                  # one multiply-add per parameter
        params_flops_per_seq   = params_flops_per_token * msl
        attn_flops_per_seq     = n_layers * 2 * 2 * (d_model * msl**2)   # QK^T and AV, 2 FLOPs per MAC
        flops_per_batch        = (params_flops_per_seq + attn_flops_per_seq) * 3 * bs   # backward = 2x forward

    It counts the backward pass as twice the forward (weight and input gradients). With LoRA the
    frozen weights get no weight gradient, so the FLOPs actually executed are closer to 2x the
    forward: `executed_flops_per_batch` reports that too, so nobody mistakes one for the other.
    """
    params_flops_per_seq = 2 * n_params * seq_len
    attn_flops_per_seq = n_layers * 2 * 2 * (d_model * seq_len**2)
    return (params_flops_per_seq + attn_flops_per_seq) * 3 * batch_size


def executed_flops_per_batch(n_params: int, n_layers: int, d_model: int, batch_size: int, seq_len: int,
                             recompute: bool) -> float:
    """Forward + input-gradient backward (+ a second forward when activations are recomputed); the
    adapters' own weight gradients are under 1% of it and left out."""
    forward = (2 * n_params * seq_len + n_layers * 2 * 2 * d_model * seq_len**2) * batch_size
    return forward * (3 if recompute else 2)


def peak_flops(device_name: str) -> float | None:
    for marker, flops in PEAK_BF16_FLOPS:
        if marker.lower() in device_name.lower():
            return flops
    return None


def build_model(shape: dict, device: str, dtype):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**shape)
    torch.manual_seed(0)
    with torch.device(device):  # initialised on the GPU: seconds, not minutes on the CPU
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    return model


def run(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    cuda = torch.cuda.is_available() and not args.cpu
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = TINY if args.tiny else LLAMA_31_8B
    started = time.perf_counter()
    model = build_model(shape, device, dtype)
    init_s = time.perf_counter() - started
    # The recipe's adapter (recipes/llama-3.1-8b-lora.yaml): r 16, alpha 32, dropout 0.05, all linear layers.
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=args.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    n_params = sum(p.numel() for p in model.parameters())  # llm-foundry: every parameter of the model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, fused=cuda)
    generator = torch.Generator(device=device).manual_seed(0)
    vocab = shape["vocab_size"]

    def step(batch_size: int):
        ids = torch.randint(0, vocab, (batch_size, args.seq_len), device=device, generator=generator)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    # Largest batch first; on out-of-memory fall back (then to activation recomputation), so the
    # script finishes unattended whatever the card's memory.
    attempts = [(b, False) for b in args.batch_sizes] + [(max(args.batch_sizes), True)]
    failures = []
    for batch_size, recompute in attempts:
        if recompute:
            model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            for _ in range(args.warmup):
                step(batch_size)
            sync()
            start = time.perf_counter()
            for _ in range(args.steps):
                loss = step(batch_size)
            final_loss = float(loss)
            sync()
            elapsed = time.perf_counter() - start
            break
        except torch.OutOfMemoryError as exc:
            failures.append({"batch_size": batch_size, "recompute": recompute, "error": str(exc).splitlines()[0]})
        # Outside the except clause, so the failed step's frames (and their tensors) are already gone.
        optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    else:
        return {"ok": False, "error": "out of memory at every batch size", "failures": failures}

    tokens = batch_size * args.seq_len * args.steps
    layers, d_model = shape["num_hidden_layers"], shape["hidden_size"]
    flops = llm_foundry_flops_per_batch(n_params, layers, d_model, batch_size, args.seq_len) * args.steps
    executed = executed_flops_per_batch(n_params, layers, d_model, batch_size, args.seq_len, recompute) * args.steps
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device_name)
    return {
        "ok": True, "device": device_name, "shape": "tiny" if args.tiny else "llama-3.1-8b", "dtype": str(dtype),
        "params": n_params, "trainable_params": trainable, "seq_len": args.seq_len, "batch_size": batch_size,
        "activation_recompute": recompute, "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r,
                                                     "dropout": args.lora_dropout, "target_modules": "all-linear"},
        "warmup_steps": args.warmup, "timed_steps": args.steps, "seconds": round(elapsed, 3),
        "step_seconds": round(elapsed / args.steps, 4), "tokens_per_s": round(tokens / elapsed, 1),
        "model_tflops_per_s": round(flops / elapsed / 1e12, 1),
        "mfu_llm_foundry": round(flops / elapsed / peak, 4) if peak else None,
        "executed_tflops_per_s": round(executed / elapsed / 1e12, 1),
        "executed_fraction_of_peak": round(executed / elapsed / peak, 4) if peak else None,
        "peak_tflops": peak / 1e12 if peak else None, "final_loss": round(final_loss, 3),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
        "init_s": round(init_s, 1), "oom_fallbacks": failures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="LoRA SFT tokens/s and MFU, Llama-3.1-8B shape, random init.")
    parser.add_argument("--tiny", action="store_true", help="tiny shape (CPU dry run of the same code)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is present")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 1],
                        help="micro-batch sizes to try in order (out of memory: the next)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--peak-tflops", type=float, help="override the GPU's dense bf16 peak")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.tiny:
        args.seq_len, args.steps, args.warmup = min(args.seq_len, 128), min(args.steps, 2), min(args.warmup, 1)
    result = run(args)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
