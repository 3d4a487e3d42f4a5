"""Self-distillation replay for the data stage: the base model's own answers to general prompts,
mixed into SFT so that a narrow task does not train away what the base could already do.

    lathe data data.replay.enabled=true data.replay.share=0.5

Why this works: catastrophic forgetting in SFT comes from the gradient only ever seeing the task's
distribution (here: terse skill answers). Rows in which the base model answers ordinary prompts the
way it already does pull the model back towards its own behaviour at almost no cost to the task
(self-distillation fine-tuning, Yang et al., ACL 2024). The prompts are eval/prompts/general.jsonl's
`replay` split; its `heldout` split is the retention suite's and is never trained on — a training row
holding one of those prompts is counted in the data manifest (`retention_prompts_in_training`).

The answers are generated greedily once per (base weights, prompts file, settings) and cached under
.lathe/base-answers, so re-running the data stage costs nothing; the same seed gives the same rows.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from pipelines.manifest import read_manifest
from recipes.schema import ReplayConfig

CACHE = Path(".lathe/base-answers")


def rows_for(cfg: ReplayConfig, task_rows: int, root: Path, rng: random.Random) -> tuple[list[dict], dict]:
    """Replay rows to add to `task_rows` SFT training rows so they make `cfg.share` of the result, and the
    source record for the data manifest."""
    answers, info = _answers(cfg, root)
    rows = [{"messages": [{"role": "user", "content": a["prompt"]}, {"role": "assistant", "content": a["answer"]}],
             "source": f"replay:{a['id']}"} for a in _cycle(answers, _wanted(cfg.share, task_rows), rng)]
    return rows, {**info, "rows": len(rows), "share": cfg.share}


def pairs_for(cfg: ReplayConfig, task_pairs: int, root: Path, rng: random.Random) -> tuple[list[dict], dict]:
    """Replay preference pairs (chosen: the base's answer; rejected: its first sentence) making
    `cfg.preference_share` of the preference training rows. Single-sentence answers give no pair."""
    answers, info = _answers(cfg, root)
    usable = [(a, first) for a in answers if (first := first_sentence(a["answer"])) != a["answer"]]
    pairs = [{"prompt": [{"role": "user", "content": a["prompt"]}],
              "chosen": [{"role": "assistant", "content": a["answer"]}],
              "rejected": [{"role": "assistant", "content": first}], "source": f"replay:{a['id']}"}
             for a, first in _cycle(usable, _wanted(cfg.preference_share, task_pairs), rng)]
    return pairs, {**info, "generated": "replay-preference", "pairs": len(pairs), "share": cfg.preference_share,
                   "single_sentence_skipped": len(answers) - len(usable)}


def first_sentence(text: str) -> str:
    """The text up to its first sentence end or line break (the "cut short" answer of a replay pair)."""
    return re.split(r"(?<=[^\d\s][.!?])\s+|\n", text.strip(), maxsplit=1)[0].strip()  # "1. Fish" is no end


def _wanted(share: float, task_rows: int) -> int:
    return round(share / (1 - share) * task_rows)


def _cycle(items: list, wanted: int, rng: random.Random) -> list:
    order = items[:]
    rng.shuffle(order)
    return [order[i % len(order)] for i in range(wanted)] if order else []


def _answers(cfg: ReplayConfig, root: Path) -> tuple[list[dict], dict]:
    from eval import retention

    base_dir = Path(read_manifest("base", root)["outputs"]["model_dir"])
    cuda = _cuda()
    answers = retention.base_answers(base_dir, "replay", cfg.max_new_tokens, CACHE, limit=cfg.limit,
                                     device="cuda" if cuda else "cpu", dtype="bfloat16" if cuda else "float32")
    # Only answers that ended on their own: the chat template closes every trained answer with the end-of-turn
    # token, so an answer cut at max_new_tokens would teach the model to stop mid-sentence; an empty one
    # teaches nothing but the end-of-turn token.
    usable = [{**a, "answer": a["answer"].strip()} for a in answers if a["answer"].strip() and a["finished"]]
    dropped = len(answers) - len(usable)
    answers = usable
    info = {"generated": "replay", "base_model_dir": str(base_dir), "prompts": str(retention.PROMPTS_FILE),
            "prompts_available": len(answers), "unfinished_or_empty_dropped": dropped,
            "max_new_tokens": cfg.max_new_tokens}
    return answers, info


def held_out_overlap(rows: list[dict]) -> int:
    """How many training rows contain one of the retention suite's held-out prompts as a user turn."""
    from eval import retention

    held_out = {p["prompt"].strip().lower() for p in retention.load_prompts("heldout")}
    return sum(any(m.get("role") == "user" and str(m.get("content", "")).strip().lower() in held_out
                   for m in row.get("messages", [])) for row in rows)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
