"""`lathe data inspect`: what each training row trains, shown through the SFT stage's own encoder
(chat/encode.py) with the base model's tokenizer and chat template — after `lathe data`.

    lathe data inspect                      # first 3 rows, trained tokens highlighted, totals
    lathe data inspect --rows 10 --split sft_val
    lathe data inspect --html artifacts/data/inspect.html
    lathe data inspect --json > trained.json   # per row: the trained text spans

Trained tokens are green, masked ones grey, tokens that `sft.max_seq_length` cuts off red. Totals
give trained vs masked tokens, what truncation cuts, and with `sft.packing` how many packed
sequences of max_seq_length the rows become and how full they are.
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path

from chat.encode import IGNORE
from pipelines.manifest import read_manifest
from recipes.errors import LatheError
from recipes.schema import Recipe

_ANSI = {"trained": ("\033[30;42m", "\033[0m"), "masked": ("\033[2m", "\033[0m"), "cut": ("\033[9;31m", "\033[0m")}
_PLAIN = {"trained": ("[[", "]]"), "masked": ("", ""), "cut": ("~~", "~~")}  # when stdout is not a terminal


def inspect_split(recipe: Recipe, split: str = "sft_train", root: Path = Path("artifacts")) -> dict:
    """The report `--json` prints: totals and, per row, its tokens and trained text spans."""
    from pipelines import training
    from pipelines.sft import encode_split, keeps_every_token, truncation

    data = read_manifest("data", root)["outputs"]
    if split not in data:
        raise LatheError(f"data inspect: no split {split!r} (have {', '.join(k for k in data if k.startswith('sft'))})")
    tokenizer = training.load_tokenizer(Path(read_manifest("base", root)["outputs"]["model_dir"]))
    cfg = recipe.sft
    encoded = encode_split(Path(data[split]["path"]), tokenizer, assistant_only=cfg.assistant_only_loss)
    limit = None if keeps_every_token(cfg.packing, cfg.packing_strategy) else cfg.max_seq_length
    rows = [_row(number, enc, tokenizer, limit) for number, enc in enumerate(encoded, start=1)]
    tokens = sum(len(enc.input_ids) for enc in encoded)
    trained = sum(enc.trained_tokens for enc in encoded)
    totals = {"rows": len(rows), "tokens": tokens, "trained_tokens": trained, "masked_tokens": tokens - trained,
              **truncation(encoded, cfg.max_seq_length, packing=cfg.packing, strategy=cfg.packing_strategy),
              "kinds": {kind: sum(1 for r in rows if r["kind"] == kind) for kind in ("chat", "text", "tokens")}}
    if cfg.packing and encoded:
        totals["packing"] = _packing(encoded, cfg.max_seq_length, cfg.packing_strategy)
    return {"split": split, "path": data[split]["path"], "max_seq_length": cfg.max_seq_length,
            "assistant_only_loss": cfg.assistant_only_loss, "totals": totals, "rows": rows}


def _row(number: int, enc, tokenizer, limit: int | None) -> dict:
    kept = enc.labels[:limit] if limit else enc.labels
    runs, run = [], []
    for index, label in enumerate(kept):
        if label != IGNORE:
            run.append(index)
        elif run:
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    return {"row": number, "kind": enc.kind, "tokens": len(enc.input_ids), "trained_tokens": enc.trained_tokens,
            "cut_tokens": max(0, len(enc.input_ids) - limit) if limit else 0,
            "trained": [_piece(enc, tokenizer, r[0], r[-1] + 1) for r in runs],
            "pieces": [(_piece(enc, tokenizer, i, i + 1), _state(enc.labels[i], i, limit))
                       for i in range(len(enc.input_ids))]}


def _piece(enc, tokenizer, start: int, end: int) -> str:
    """The text of tokens [start, end): characters of the rendered text where there is one."""
    if enc.text is not None and enc.offsets and enc.offsets[end - 1][1] > enc.offsets[start][0]:
        return enc.text[enc.offsets[start][0]:enc.offsets[end - 1][1]]
    return tokenizer.decode(enc.input_ids[start:end])


def _state(label: int, index: int, limit: int | None) -> str:
    if limit is not None and index >= limit:
        return "cut"
    return "masked" if label == IGNORE else "trained"


def _packing(encoded: list, max_length: int, strategy: str) -> dict:
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    rows = Dataset.from_dict({"input_ids": [enc.input_ids for enc in encoded]})
    packed = pack_dataset(rows, seq_length=max_length, strategy=strategy)
    kept = sum(len(ids) for ids in packed["input_ids"])
    return {"strategy": strategy, "sequences": len(packed), "fill": round(kept / (len(packed) * max_length), 3)}


def render_terminal(report: dict, rows: int, colour: bool) -> str:
    t = report["totals"]
    lines = [f"{report['path']} ({report['split']}): {t['rows']} rows, {t['tokens']} tokens, "
             f"{t['trained_tokens']} trained ({t['trained_tokens'] / max(1, t['tokens']):.0%}), {t['masked_tokens']} masked",
             f"max_seq_length {report['max_seq_length']}: {t['rows_truncated']} rows truncated, "
             f"{t['trained_tokens_cut']} trained tokens cut, {t['rows_dropped_by_truncation']} rows left with none"]
    if "packing" in t:
        p = t["packing"]
        lines.append(f"packing ({p['strategy']}): {p['sequences']} sequences of {report['max_seq_length']}, fill {p['fill']:.0%}")
    marks = _ANSI if colour else _PLAIN
    lines.append("legend: " + " ".join(f"{marks[s][0]}{name}{marks[s][1]}" for s, name in
                                      (("trained", "trained"), ("masked", "masked"), ("cut", "cut by max_seq_length"))))
    for row in report["rows"][:rows]:
        lines.append(f"\n── row {row['row']} ({row['kind']}): {row['tokens']} tokens, {row['trained_tokens']} trained"
                     + (f", {row['cut_tokens']} cut" if row["cut_tokens"] else ""))
        lines.append("".join(f"{marks[state][0]}{text}{marks[state][1]}" for text, state in _runs(row["pieces"])))
    return "\n".join(lines)


def _runs(pieces: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Consecutive tokens in the same state as one run."""
    out: list[tuple[str, str]] = []
    for text, state in pieces:
        if out and out[-1][1] == state:
            out[-1] = (out[-1][0] + text, state)
        else:
            out.append((text, state))
    return out


def render_html(report: dict, rows: int) -> str:
    body = [f"<h1>Training rows: {html.escape(report['path'])}</h1>",
            f"<pre class=totals>{html.escape(json.dumps(report['totals'], indent=1))}</pre>",
            "<p><span class=trained>trained</span> <span class=masked>masked</span> "
            "<span class=cut>cut by max_seq_length</span></p>"]
    for row in report["rows"][:rows]:
        body.append(f"<h2>row {row['row']} ({row['kind']}): {row['tokens']} tokens, {row['trained_tokens']} trained</h2>")
        body.append("<pre>" + "".join(f"<span class={state}>{html.escape(piece)}</span>"
                                      for piece, state in row["pieces"]) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:72rem;margin:auto}pre{white-space:pre-wrap;border:1px solid #ccc;"
             "padding:.5rem}.trained{background:#b7f0b1}.masked{color:#777}.cut{color:#b00;text-decoration:line-through}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>lathe data inspect</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")


def main(recipe: Recipe, args) -> int:
    report = inspect_split(recipe, args.split)
    if args.json:
        for row in report["rows"]:
            row.pop("pieces")
        json.dump(report, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    if args.html:
        Path(args.html).write_text(render_html(report, args.rows), encoding="utf-8")
        print(f"data inspect: {min(args.rows, len(report['rows']))} rows written to {args.html}")
    print(render_terminal(report, args.rows, colour=sys.stdout.isatty()))
    return 0
