"""Stage `data`: load, normalise, validate, de-duplicate, mix and split the training data.

    lathe data --recipe params.yaml

With `data.replay.enabled`, the base model's own answers to general prompts are mixed into
sft_train.jsonl (pipelines/replay.py): this is the one stage that reads the base model.

Writes `artifacts/data/`: sft_{train,val}.jsonl (chat messages), pref_{train,val}.jsonl
(prompt/chosen/rejected), skills_eval.jsonl (held-out skills, never trained on), eval_split.jsonl
(`data.eval_split`: held-out rows of the user's own SFT data, for a custom eval suite), rejects.jsonl and
manifest.json.

Bad rows: with `data.on_bad_row: error` (the default) the stage stops at the first bad row and names
file, line and reason. With `skip`, every bad row is written to rejects.jsonl with its file, line and
reason and counted in the manifest — nothing is dropped without a record.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path
from typing import Any, Callable

from pipelines import replay, skills
from pipelines.formats import RowError, normalize_preference, normalize_sft, read_rows
from pipelines.manifest import stage_dir, write_manifest
from recipes.identity import file_sha256
from recipes.errors import LatheError
from recipes.schema import DatasetSpec, Recipe

Normalizer = Callable[[Any, str], dict]


class Rejects:
    """Collects bad rows (policy `skip`) or stops at the first one (policy `error`)."""

    def __init__(self, policy: str):
        self.policy = policy
        self.rows: list[dict] = []

    def add(self, path: Path, where: str, reason: str, row: Any) -> None:
        if self.policy == "error":
            raise LatheError(f"{path}, {where}: {reason}\n(set data.on_bad_row=skip to record bad rows in "
                             f"artifacts/data/rejects.jsonl and go on)")
        self.rows.append({"file": str(path), "where": where, "reason": reason, "row": row if not isinstance(row, RowError) else None})


def load_spec(spec: DatasetSpec, normalize: Normalizer, rejects: Rejects, rng: random.Random) -> tuple[list[dict], dict]:
    path = Path(spec.path)
    if not path.exists():
        raise LatheError(f"data: dataset file {path} not found (from data.*.path; relative paths resolve against the project root)")
    good: list[dict] = []
    total = 0
    for where, row in read_rows(path):
        total += 1
        if isinstance(row, RowError):
            rejects.add(path, where, str(row), row)
            continue
        try:
            good.append(normalize(row, spec.format))
        except RowError as exc:
            rejects.add(path, where, str(exc), row)
    if spec.max_rows is not None:
        good = good[: spec.max_rows]
    if spec.weight != 1.0 and good:
        target = max(1, round(len(good) * spec.weight))
        good = [good[i % len(good)] for i in range(target)] if spec.weight > 1 else rng.sample(good, target)
    info = {"path": str(path), "sha256": file_sha256(path), "rows_read": total, "rows_kept": len(good),
            "format": spec.format, "weight": spec.weight}
    return good, info


def bfcl_rows(mirror: Path, subsets: list[str]) -> tuple[list[dict], list[dict]]:
    """`data.tools`: the BFCL items the `tools` suite does not score, as checked chat rows."""
    from eval import tools

    rows, sources = [], []
    for subset in subsets:
        questions, answers = tools.files(mirror, subset)
        if not (questions.exists() and answers.exists()):
            raise LatheError(f"data.tools: {questions} or its answers file is missing (BFCL v4 under eval.mirror_dir/bfcl)")
        rows += [normalize_sft(row) for row in tools.training_rows(mirror, subset)]
        sources.append({"generated": "bfcl", "subset": subset, "path": str(questions), "sha256": file_sha256(questions),
                        "answers_sha256": file_sha256(answers)})
    return rows, sources


def base_vocab_size(root: Path) -> int | None:
    """The base model's vocabulary size, to check pre-tokenized rows here rather than mid-training;
    None before the base stage has run (the SFT stage checks the ids again with the tokenizer)."""
    manifest = root / "base" / "manifest.json"
    if not manifest.exists():
        return None
    config = Path(json.loads(manifest.read_text())["outputs"]["model_dir"]) / "config.json"
    return json.loads(config.read_text()).get("vocab_size") if config.exists() else None


def dedupe(rows: list[dict]) -> tuple[list[dict], int]:
    seen: set[str] = set()
    out = []
    for row in rows:
        key = json.dumps({k: v for k, v in row.items() if k != "skill"}, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out, len(rows) - len(out)


def prompt_key(row: dict) -> str | None:
    """A chat row's prompt (every message before the last), case- and whitespace-normalised; None for
    text and token rows."""
    messages = row.get("messages")
    if not messages:
        return None
    prompt = [(m["role"], " ".join(str(m.get("content") or "").lower().split()), m.get("tool_calls"))
              for m in messages[:-1]]
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def carve_eval_split(rows: list[dict], cfg, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(held-out eval rows, the rest) from the user's SFT rows: chat rows only (a text or token row has no
    reference answer), one per normalised prompt."""
    if cfg.fraction == 0:
        return [], rows
    chat = [i for i, row in enumerate(rows) if prompt_key(row) is not None]
    rng.shuffle(chat)
    n = max(1, int(len(chat) * cfg.fraction)) if chat else 0
    chosen, prompts = set(), set()
    for i in chat:
        if len(chosen) == min(n, cfg.max_rows or n):
            break
        if prompt_key(rows[i]) not in prompts:
            chosen.add(i)
            prompts.add(prompt_key(rows[i]))
    return [rows[i] for i in sorted(chosen)], [row for i, row in enumerate(rows) if i not in chosen]


def drop_overlap(train: list[dict], held_out: list[dict]) -> tuple[list[dict], int]:
    """Training rows minus any row whose prompt (normalised) is a held-out row's: the eval set stays unseen."""
    prompts = {prompt_key(row) for row in held_out}
    kept = [row for row in train if prompt_key(row) is None or prompt_key(row) not in prompts]
    return kept, len(train) - len(kept)


def split(rows: list[dict], fraction: float, rng: random.Random) -> tuple[list[dict], list[dict]]:
    rows = rows[:]
    rng.shuffle(rows)
    n_val = int(len(rows) * fraction)
    if fraction > 0 and len(rows) >= 2:
        n_val = max(1, n_val)
    return rows[n_val:], rows[:n_val]


def write_jsonl(path: Path, rows: list[dict]) -> dict:
    # A rejected row may hold a lone surrogate (that is why it was rejected): UTF-8 cannot encode it, and
    # "backslashreplace" writes it as the JSON escape \udXXX it came in as (it can only sit inside a string).
    with open(path, "w", encoding="utf-8", errors="backslashreplace") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"path": str(path), "rows": len(rows), "sha256": file_sha256(path)}


def run_data(recipe: Recipe, root: Path = Path("artifacts")) -> dict:
    cfg = recipe.data
    out = stage_dir("data", root)
    rng = random.Random(cfg.seed)
    rejects = Rejects(cfg.on_bad_row)
    sets: dict[str, list[dict]] = {"sft": [], "preference": []}
    sources: list[dict] = []
    eval_rows: list[dict] = []
    if cfg.skills.enabled:
        s = cfg.skills
        generated = skills.generate(s.n_train, s.n_eval, s.n_preference, s.seed)
        sets["sft"] += generated["sft"]
        sets["preference"] += generated["preference"]
        eval_rows = generated["eval"]
        sources.append({"generated": "skills", "seed": s.seed, "n_train": s.n_train, "n_eval": s.n_eval,
                        "n_preference": s.n_preference})
    if cfg.tools.enabled:
        rows, info = bfcl_rows(Path(recipe.eval.mirror_dir), cfg.tools.subsets)
        sets["sft"] += rows
        sources += info
    sft = functools.partial(normalize_sft, vocab_size=base_vocab_size(root))
    users_sft: list[dict] = []
    for kind, specs, normalize in (("sft", cfg.sft, sft), ("preference", cfg.preference, normalize_preference)):
        for spec in specs:
            rows, info = load_spec(spec, normalize, rejects, rng)
            (users_sft if kind == "sft" else sets[kind]).extend(rows)
            sources.append({"kind": kind, **info})
    given_val: dict[str, list[dict] | None] = {"sft": None, "preference": None}
    for kind, specs, normalize in (("sft", cfg.sft_validation, sft), ("preference", cfg.preference_validation,
                                                                       normalize_preference)):
        for spec in specs:
            rows, info = load_spec(spec, normalize, rejects, rng)
            given_val[kind] = (given_val[kind] or []) + rows
            sources.append({"kind": kind, "role": "validation", **info})
    held_out, users_sft = carve_eval_split(users_sft, cfg.eval_split, rng)
    sets["sft"] += users_sft
    sets["sft"], overlap = drop_overlap(sets["sft"], held_out)
    outputs: dict[str, Any] = {"eval_split": write_jsonl(out / "eval_split.jsonl", held_out)}
    metrics: dict[str, Any] = {"rejected_rows": len(rejects.rows), "eval_split_rows": len(held_out),
                               "eval_split_overlap_dropped": overlap}
    for kind, prefix in (("sft", "sft"), ("preference", "pref")):
        rows, dropped = dedupe(sets[kind]) if cfg.dedupe else (sets[kind], 0)
        if given_val[kind] is None:
            train, val = split(rows, cfg.validation_fraction, rng)
        else:  # the user's own validation rows, as written
            train, val = rows, given_val[kind]
        if kind == "sft" and cfg.replay.enabled:
            added, info = replay.rows_for(cfg.replay, len(train), root, rng)
            train += added
            rng.shuffle(train)
            sources.append(info)
            metrics["sft_replay_rows"] = len(added)
        if kind == "preference" and cfg.replay.enabled and cfg.replay.preference_share > 0:
            added, info = replay.pairs_for(cfg.replay, len(train), root, rng)
            train += added
            rng.shuffle(train)
            sources.append(info)
            metrics["pref_replay_rows"] = len(added)
        if kind == "sft":
            metrics["retention_prompts_in_training"] = replay.held_out_overlap(train + val)
        outputs[f"{prefix}_train"] = write_jsonl(out / f"{prefix}_train.jsonl", train)
        outputs[f"{prefix}_val"] = write_jsonl(out / f"{prefix}_val.jsonl", val)
        metrics[f"{prefix}_duplicates_dropped"] = dropped
    outputs["skills_eval"] = write_jsonl(out / "skills_eval.jsonl", eval_rows)
    outputs["rejects"] = write_jsonl(out / "rejects.jsonl", rejects.rows)
    write_manifest(out, stage="data", inputs={"sources": sources}, settings=cfg.model_dump(), outputs=outputs,
                   metrics=metrics)
    return outputs


def main(recipe: Recipe, args) -> int:
    outputs = run_data(recipe)
    counts = ", ".join(f"{k} {v['rows']}" for k, v in outputs.items())
    print(f"data: {counts} (artifacts/data)")
    return 0
