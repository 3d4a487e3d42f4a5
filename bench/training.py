"""Training bench, two comparisons in one run on the real, variable-length Alpaca set
(999 rows, 48-751 tokens with the chat template, median 162) and SmolLM2-135M + LoRA (the recipe's
defaults: r 16, all linear layers), float32 on CPU:

1. packing: TRL SFT as Lathe's `sft.packing: true` runs it, with `packing_strategy: wrapped` (dense
   rows; judged: the setting for hardware without FlashAttention) and `bfd` (best-fit bins, padding-free
   flat rows), vs padding to the longest row of each batch. Measured in *effective* tokens/s: tokens
   that are not padding, with padding's fill taken over the whole epoch (see packing_arm). Goal ≥ 2×.
2. stage: Lathe's SFT stage (`pipelines.sft.run_sft`, reading manifests, writing the adapter and its
   manifest) vs a bare TRL SFTTrainer script with the same settings doing the same work (load, train,
   save the adapter). Goal: Lathe's end-to-end tokens/s ≥ 0.95× the bare script's.

    python -m bench.training            # ~5.5 min on 2 quiet cores
    python -m bench.training --quick    # ~2.5 min
    python -m bench.training --part packing --profile   # + the same tokens in three layouts, outside TRL

Writes bench/results/training.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import TrainerCallback  # noqa: E402  (after the environment above)

from bench.common import (RESULTS_DIR, alpaca_messages, goal, log, median, model_arg, run_options,  # noqa: E402
                          write_result)

PACKING_GOAL = 2.0
STAGE_GOAL = 0.95


class StepClock(TrainerCallback):
    """Notes wall time, this process's CPU time and the tokens seen at the end of every step, so
    throughput can be taken after the first (warm-up) step. On a shared machine the wall clock also
    counts time other programs took from us; with one torch thread the CPU time does not, so the
    CPU-time rate is the steadier of the two (`cpu_share` says how much of the wall time we got)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float, int]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks = [(time.perf_counter(), time.process_time(), state.num_input_tokens_seen)]

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append((time.perf_counter(), time.process_time(), state.num_input_tokens_seen))

    def rate(self, skip: int = 1) -> dict:
        """Tokens/s over the steps after the first `skip` ones."""
        (t0, c0, n0), (t1, c1, n1) = self.marks[skip], self.marks[-1]
        return {"steps_timed": len(self.marks) - 1 - skip, "tokens": n1 - n0, "seconds": round(t1 - t0, 3),
                "cpu_seconds": round(c1 - c0, 3), "cpu_share": round((c1 - c0) / (t1 - t0), 3) if t1 > t0 else None,
                "tokens_per_s": round((n1 - n0) / (t1 - t0), 2) if t1 > t0 else None,
                "tokens_per_cpu_s": round((n1 - n0) / (c1 - c0), 2) if c1 > c0 else None,
                "step_seconds": [round(b[0] - a[0], 2) for a, b in zip(self.marks, self.marks[1:])]}


def trl_rows(conversations: list[list[dict]]) -> list[dict]:
    """prompt/completion rows: the loss covers the answer only (Lathe's default, assistant_only_loss)."""
    return [{"prompt": c[:-1], "completion": c[-1:]} for c in conversations]


# --- 1. packing vs padding -------------------------------------------------------------------------

ARMS = {"padding": "padding to the longest row of each batch (Lathe's default)",
        "packing": "sft.packing: true, packing_strategy: bfd (TRL's default): best-fit bins, padding-free flat rows",
        "packing_wrapped": "sft.packing: true, packing_strategy: wrapped: dense rows of max_length, no flattening"}
JUDGED_ARM = "packing_wrapped"
"""The goal is judged on the packing setting a Lathe user picks on this hardware: without FlashAttention
(CPU) that is `wrapped`; `bfd`'s padding-free rows are printed beside it (see README, "Packing")."""


def packing_arm(model_dir: Path, rows: list[dict], arm: str, args, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from recipes.schema import Recipe

    cfg = Recipe().sft
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    # Effective tokens: the attention mask's ones; TRL's default packing makes padding-free batches
    # (one flat row + position_ids, no mask: checked below), where every token counts.
    packing, padding_free = arm != "padding", arm == "packing"
    count = "all" if padding_free else "non_padding"
    strategy = {"packing_strategy": "wrapped"} if arm == "packing_wrapped" else {}
    config = SFTConfig(output_dir=str(out), max_steps=args.steps + 1, per_device_train_batch_size=args.batch_size,
                       max_length=args.max_length, packing=packing, completion_only_loss=True, **strategy,
                       eos_token=tokenizer.eos_token, learning_rate=cfg.learning_rate, seed=0, data_seed=0,
                       bf16=False, use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
                       include_num_input_tokens_seen=count, disable_tqdm=True, dataloader_num_workers=0,
                       activation_checkpointing=cfg.gradient_checkpointing)  # TRL's default is on; Lathe's off
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    clock = StepClock()
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=lora, callbacks=[clock])
    # The whole epoch's batches, collated without the model (the sampler is seeded, so this is the
    # order training sees): (real tokens, computed tokens) per batch.
    batches = []
    for batch in trainer.get_train_dataloader():
        if padding_free and "attention_mask" in batch:
            raise RuntimeError("padding-free batches carry an attention mask: padding is present, count it")
        computed = batch["input_ids"].numel()
        batches.append((int(batch["attention_mask"].sum()) if "attention_mask" in batch else computed, computed))
    trainer.train()
    rate = clock.rate()
    timed = batches[1:1 + rate["steps_timed"]]
    if sum(real for real, _ in timed) != rate["tokens"]:
        log("warning: the timed batches are not the epoch's batches 2..n; the epoch estimate is skipped")
        return {"arm": arm, **rate}
    # A few timed batches are a small sample of a variable-length set: a lucky pair of similar rows
    # pads little. The epoch estimate weighs the measured speed per computed token by the fill of
    # every batch of the epoch.
    computed_per_s = sum(c for _, c in timed) / rate["seconds"]
    fill = sum(r for r, _ in batches) / sum(c for _, c in batches)
    return {"arm": arm, "batches_in_epoch": len(batches), "epoch_fill": round(fill, 4),
            "timed_fill": round(rate["tokens"] / sum(c for _, c in timed), 4),
            "computed_tokens_per_s": round(computed_per_s, 2),
            "epoch_effective_tokens_per_s": round(fill * computed_per_s, 2), **rate}


def run_packing(model_dir: Path, args, work: Path) -> dict:
    rows = trl_rows(alpaca_messages(seed=0))
    arms: dict[str, list[dict]] = {}
    order = list(ARMS) + list(reversed(ARMS)) if args.repeats > 1 else list(ARMS)  # ABC CBA with --repeats 2
    for i, arm in enumerate(order):
        log(f"packing bench: {arm} (run {i + 1}/{len(order)})")
        arms.setdefault(arm, []).append(packing_arm(model_dir, rows, arm, args, work / f"pack{i}"))

    def rate(arm: str, key: str) -> float:
        return median(r[key] for r in arms[arm])

    epoch = all("epoch_effective_tokens_per_s" in r for runs in arms.values() for r in runs)
    key = "epoch_effective_tokens_per_s" if epoch else "tokens_per_s"
    ratios = {arm: round(rate(arm, key) / rate("padding", key), 3) for arm in arms if arm != "padding"}
    timed = {arm: round(rate(arm, "tokens_per_s") / rate("padding", "tokens_per_s"), 3) for arm in ratios}
    cpu = {arm: round(rate(arm, "tokens_per_cpu_s") / rate("padding", "tokens_per_cpu_s"), 3) for arm in ratios}
    for arm in ratios:
        print(f"{arm}: {rate(arm, key):.1f} vs padding {rate('padding', key):.1f} effective tok/s → {ratios[arm]:.2f}x "
              f"({'padding at its epoch fill ' + format(rate('padding', 'epoch_fill'), '.2f') if epoch else 'timed steps'}"
              f"; over the timed steps alone {timed[arm]:.2f}x, per CPU second {cpu[arm]:.2f}x)", flush=True)
    return {"arms": ARMS, "runs": arms, "basis": "padding's epoch fill x its measured speed" if epoch else "timed steps",
            "effective_tokens_per_s": {arm: rate(arm, key) for arm in arms},
            "judged_arm": JUDGED_ARM, "ratio": ratios[JUDGED_ARM], "ratios": ratios, "ratios_timed_steps": timed, "ratios_cpu_time": cpu}


def layout_profile(model_dir: Path, tokens: int = 2016, documents: int = 8) -> dict:
    """Where packing's time goes: one forward + backward of the same `tokens` (LoRA model, no TRL)
    laid out as TRL's padding-free packed batch (one flat row, position_ids restarting per document),
    as dense rows of 4 bins, and as one row per document."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from recipes.schema import Recipe

    lora = Recipe().sft.lora
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    ids = torch.randint(100, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    per_doc = tokens // documents
    layouts = {"packed_flat_row": dict(input_ids=ids, labels=ids,
                                       position_ids=torch.arange(per_doc).repeat(documents).unsqueeze(0)),
               "four_dense_bins": dict(input_ids=ids.view(4, -1), labels=ids.view(4, -1)),
               "row_per_document": dict(input_ids=ids.view(documents, -1), labels=ids.view(documents, -1))}

    def step(batch: dict) -> float:
        start = time.process_time()
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
        return time.process_time() - start

    result = {}
    for name, batch in layouts.items():
        step(batch)  # warm-up
        result[name] = round(tokens / min(step(batch), step(batch)), 1)
    return {"tokens": tokens, "documents": documents, "tokens_per_cpu_s": result}


def keep_other_part(payload: dict, args) -> None:
    """`--part packing|stage` rewrites its own part of the results file and keeps the other one, marked
    with the run it came from (each ratio is still measured within one run)."""
    if args.part == "all" or args.out:
        return
    previous_file = RESULTS_DIR / "training.json"
    if not previous_file.exists():
        return
    previous = json.loads(previous_file.read_text())
    other = "stage" if args.part == "packing" else "packing"
    if other in previous:
        payload[other] = {**previous[other], "from_run": previous.get("created")}
        payload["goals"] += [g for g in previous.get("goals", []) if ("packing" in g["name"]) == (other == "packing")]


# --- 2. Lathe's SFT stage vs bare TRL --------------------------------------------------------------

def stage_recipe(args):
    from recipes.schema import Recipe

    return Recipe.model_validate({"sft": {"max_steps": args.steps + 1, "batch_size": args.batch_size,
                                          "max_seq_length": args.max_length, "logging_steps": 1, "merge": False,
                                          "packing": args.stage_packing}})


def lathe_arm(model_dir: Path, train_file: Path, args, root: Path) -> dict:
    from pipelines.manifest import write_manifest
    from recipes.identity import file_sha256
    from pipelines.sft import run_sft

    (root / "base").mkdir(parents=True)
    write_manifest(root / "base", stage="base", inputs={}, settings={}, outputs={"model_dir": str(model_dir)})
    (root / "data").mkdir()
    empty_val = root / "data" / "sft_val.jsonl"
    empty_val.write_text("")
    files = {"sft_train": train_file, "sft_val": empty_val}
    write_manifest(root / "data", stage="data", inputs={}, settings={},
                   outputs={k: {"path": str(p), "sha256": file_sha256(p)} for k, p in files.items()})
    import torch

    torch.manual_seed(0)
    start, cpu = time.perf_counter(), time.process_time()
    run_sft(stage_recipe(args), root)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    metrics = json.loads((root / "sft" / "manifest.json").read_text())["metrics"]
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "train_runtime_s": metrics["train_runtime"],
            "tokens": metrics["train_tokens"]}


def bare_arm(model_dir: Path, train_file: Path, args, out: Path) -> dict:
    """What a user writes with TRL alone, with the stage's settings spelled out by hand."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    cfg = stage_recipe(args).sft
    torch.manual_seed(0)
    start, cpu = time.perf_counter(), time.process_time()
    rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    config = SFTConfig(output_dir=str(out / "checkpoints"), learning_rate=cfg.learning_rate,
                       lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio, max_steps=cfg.max_steps,
                       per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
                       seed=cfg.seed, data_seed=cfg.seed, logging_steps=cfg.logging_steps, bf16=False, use_cpu=True,
                       save_strategy="no", report_to=[], include_num_input_tokens_seen="non_padding",
                       dataloader_num_workers=0, max_length=cfg.max_seq_length, packing=cfg.packing,
                       completion_only_loss=True, eos_token=tokenizer.eos_token, disable_tqdm=False,
                       activation_checkpointing=cfg.gradient_checkpointing)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    result = trainer.train()
    trainer.model.save_pretrained(out / "adapter")
    tokenizer.save_pretrained(out / "adapter")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "train_runtime_s": result.metrics["train_runtime"],
            "tokens": float(trainer.state.num_input_tokens_seen)}


def run_stage(model_dir: Path, args, work: Path) -> dict:
    train_file = work / "sft_train.jsonl"
    train_file.write_text("".join(json.dumps({"messages": c}) + "\n" for c in alpaca_messages(seed=0)))
    runs: dict[str, list[dict]] = {"lathe": [], "bare": []}
    order = ["lathe", "bare", "bare", "lathe"][: 2 * args.repeats] if args.repeats > 1 else ["lathe", "bare"]
    # The first training run of a process pays one-off costs (kernel set-up, allocator growth, file
    # caches): ~10% of a run here. An untimed bare run takes them, so neither arm is charged.
    log("stage bench: warm-up run (not timed)")
    bare_arm(model_dir, train_file, args, work / "warmup")
    for i, arm in enumerate(order):
        log(f"stage bench: {arm} (run {i + 1}/{len(order)})")
        where = work / f"{arm}{i}"
        runs[arm].append(lathe_arm(model_dir, train_file, args, where) if arm == "lathe"
                         else bare_arm(model_dir, train_file, args, where))
    if {r["tokens"] for r in runs["lathe"] + runs["bare"]} != {runs["lathe"][0]["tokens"]}:
        log("warning: the arms did not see the same number of tokens")

    def rate(arm: str, key: str) -> float:
        return sum(r["tokens"] for r in runs[arm]) / sum(r[key] for r in runs[arm])

    end_to_end = round(rate("lathe", "wall_s") / rate("bare", "wall_s"), 3)
    cpu_ratio = round(rate("lathe", "cpu_s") / rate("bare", "cpu_s"), 3)
    train_loop = round(rate("lathe", "train_runtime_s") / rate("bare", "train_runtime_s"), 3)
    print(f"stage: Lathe end-to-end {rate('lathe', 'wall_s'):.1f} tok/s vs bare TRL {rate('bare', 'wall_s'):.1f} "
          f"→ {end_to_end:.3f}x (per CPU second: {cpu_ratio:.3f}x; train loop only: {train_loop:.3f}x)", flush=True)
    return {"runs": runs, "end_to_end_ratio": end_to_end, "cpu_time_ratio": cpu_ratio, "train_loop_ratio": train_loop,
            "tokens_per_s": {arm: {"end_to_end": round(rate(arm, "wall_s"), 2), "per_cpu_s": round(rate(arm, "cpu_s"), 2),
                                   "train_loop": round(rate(arm, "train_runtime_s"), 2)} for arm in runs}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SFT packing vs padding; Lathe's SFT stage vs bare TRL.")
    parser.add_argument("--model", help="HF model dir (default: SmolLM2-135M-Instruct, built once)")
    parser.add_argument("--part", choices=["all", "packing", "stage"], default="all")
    parser.add_argument("--steps", type=int, default=2, help="timed optimizer steps per run (after one warm-up step)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1, help="2: run each arm twice, ABBA order")
    parser.add_argument("--stage-packing", action="store_true", help="stage comparison with packing on (default off, "
                        "the recipe default)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every arm (1: steady on a shared machine; 2 threads on 2 busy cores "
                             "were 5x slower here)")
    run_options(parser, "training", profile="also time one forward + backward of the same tokens in the packed, "
                "binned and per-document layouts, outside TRL (+1 min)", quick="1 timed step, batch 2")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size = 1, 2
    import torch

    torch.set_num_threads(args.threads)
    model_dir = model_arg(args.model)
    started = time.perf_counter()
    payload: dict = {"settings": {**{k: v for k, v in vars(args).items() if k != "out"}, "model_dir": str(model_dir)}}
    goals = []
    with tempfile.TemporaryDirectory(prefix="lathe-bench-training-") as tmp:
        work = Path(tmp)
        if args.part in ("all", "packing"):
            payload["packing"] = run_packing(model_dir, args, work)
            goals.append(goal("SFT effective tokens/s, packing vs padding", payload["packing"]["ratio"], PACKING_GOAL))
            if args.profile:
                log("profile: one step of the same tokens in three layouts")
                payload["packing"]["profile"] = profile = layout_profile(model_dir)
                print(f"profile, tokens per CPU second: {profile['tokens_per_cpu_s']}", flush=True)
        if args.part in ("all", "stage"):
            payload["stage"] = run_stage(model_dir, args, work)
            goals.append(goal("Lathe SFT stage vs bare TRL SFTTrainer (end-to-end tokens/s)",
                              payload["stage"]["end_to_end_ratio"], STAGE_GOAL))
    payload.update(goals=goals, wall_s=round(time.perf_counter() - started, 1))
    keep_other_part(payload, args)
    write_result("training", payload, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
