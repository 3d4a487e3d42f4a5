"""HTML rendering of the report model built in eval/report.py: one file, inline CSS and SVG charts,
no scripts and no external resources, so it opens offline and can be attached to a run as is."""

from __future__ import annotations

from html import escape

LEGEND = ("Values are fractions (0-1) with their 95% interval [Wilson's for right/wrong scores, ±1.96 SE "
          "otherwise] and n, the items scored. Δ is each model minus {base}: where the two were compared "
          "item by item, with the paired 95% interval and p-value, and marked (n.s.) when p ≥ 0.05; "
          "elsewhere ± the combined standard error, with no verdict.")
PALETTE = ["#7a869a", "#2f6fbd", "#2e9e6a", "#c77d1a", "#8a4fbf", "#c2414b"]

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1100px;
color:#1f2328;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.pos{color:#1a7f37}.neg{color:#cf222e}.primary{font-weight:600}.muted{color:#656d76}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:.3rem .6rem;border-radius:4px}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;white-space:pre-wrap;font-size:.8rem;margin:.3rem 0}
details{margin:.3rem 0 .6rem}summary{cursor:pointer}
.ok{color:#1a7f37}.bad{color:#cf222e}code{background:#f6f8fa;padding:0 .2rem}
.verdict{border:2px solid #2f6fbd;border-radius:6px;padding:.2rem 1rem .6rem;background:#f5f9ff}
.verdict h2{margin-top:.6rem;border:none}
.tick{fill:#656d76}
"""


def render_html(model: dict, title: str, extra: dict[str, str]) -> str:
    labels, base = model["labels"], model["labels"][0]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>",
             f"<section class='verdict'><h2>Verdict</h2>{_markdown(model['verdict'])}</section>" if model.get("verdict") else "",
             f"<p class='muted'>{escape(LEGEND.format(base=base))}</p>", "<h2>Models</h2>",
             _table(["label", "model dir", "model hash", "lm-eval"],
                    [[_swatch(i) + escape(m["label"]), escape(str(m["model_dir"])),
                      f"<code>{escape((m['model_hash'] or '')[:12])}</code>", escape(str(m["lm_eval_version"]))]
                     for i, m in enumerate(model["models"])])]

    parts.append("<h2>Summary</h2>")
    if model["summary"]:
        parts.append(_bar_chart([r for r in model["summary"] if r["primary"]], labels))
        header = ["suite", "metric"] + labels + [f"Δ {lb} vs {base}" for lb in labels[1:]]
        rows = [[escape(r["suite"]), f"<span class='primary'>{escape(r['metric'])}</span>" if r["primary"]
                 else escape(r["metric"])] + [_num(text(c)) for c in r["cells"]]
                + [_delta(d) for d in r["deltas"]] for r in model["summary"]]
        parts.append(_table(header, rows))
        parts += [f"<p class='warn'>⚠ {escape(w)}</p>" for w in model["warnings"]]
    else:
        parts.append("<p>No suite ran.</p>")

    if model["not_run"]:
        parts.append("<h2>Not run</h2><ul>")
        parts += [f"<li><b>{escape(n['suite'])}</b> ({escape(n['label'])}): {escape(n['reason'])}<br>"
                  f"<span class='muted'>Fix:</span> {escape(n['fix'])}</li>" for n in model["not_run"]]
        parts.append("</ul>")

    parts.append("<h2>Settings</h2>")
    for s in model["settings"]:
        parts.append(f"<h3>{escape(s['suite'])}</h3>")
        if s["differs"]:
            parts.append(f"<p class='warn'>The labels were evaluated with different {escape(', '.join(s['differs']))}: "
                         "the scores are not directly comparable.</p>")
        parts.append(_table(["setting", "value"], [[escape(k), escape(str(v))] for k, v in s["settings"].items()]))

    for table in model["breakdowns"]:
        parts.append(f"<h2>{escape(table['suite'])} by {escape(table['kind'])} ({escape(str(table['metric']))})</h2>")
        header = [table["kind"], *labels] + [f"Δ {lb}" for lb in labels[1:]]
        rows = [[escape(str(r["part"]))] + [_num(text(c)) for c in r["cells"]] + [_delta(d) for d in r["deltas"]]
                for r in table["rows"]]
        parts.append(_table(header, rows))

    parts.append("<h2>Sample outputs</h2>")
    for ex in model["examples"]:
        items = [(k, it) for k in ("right", "wrong") for it in ex.get(k, [])]
        if not items:
            continue
        parts.append(f"<h3>{escape(ex['suite'])} — {escape(ex['label'])}</h3>")
        for kind, item in items:
            mark = "<span class='ok'>✔ right</span>" if kind == "right" else "<span class='bad'>✘ wrong</span>"
            extracted = f" · extracted <code>{escape(str(item['filtered']))}</code>" if "filtered" in item else ""
            extracted += f" · judge <code>{escape(str(item['judge']))}</code>" if "judge" in item else ""
            part = f" [{escape(str(item['part']))}]" if item.get("part") else ""
            parts.append(f"<details><summary>{mark}{part} · target <code>{escape(str(item['target']))}</code> · "
                         f"response <code>{escape(str(item['response']))}</code>{extracted}</summary>"
                         f"<pre>{escape(item['prompt'])}</pre></details>")

    if any(model.get("curves", {}).values()):
        parts.append("<h2>Loss curves</h2>")
        parts += [_loss_chart(stage, rows) for stage, rows in model["curves"].items() if rows]
    for heading, body in extra.items():
        parts.append(f"<h2>{escape(heading)}</h2>{_markdown(body)}")
    parts.append("</body></html>")
    return "\n".join(parts)


def text(cell: dict | None) -> str:
    """A cell's display text ("0.412 ± 0.031", "+0.120 (±0.045)"), or a dash where there is none."""
    return "—" if cell is None else cell["text"]


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Cells are HTML already (escaped by the caller); a cell that is a whole <td> is kept as is."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num(text: str) -> str:
    return f"<td class='num'>{escape(text)}</td>"


def _delta(delta: dict | None) -> str:
    """Green or red only for a significant paired difference; any other Δ stays neutral."""
    if delta is None or not delta.get("significant"):
        cls = "muted" if delta is not None and delta.get("significant") is False else ""
    else:
        cls = "pos" if delta["value"] > 0 else "neg"
    return f"<td class='num {cls}'>{escape(text(delta))}</td>"


def _swatch(i: int) -> str:
    return (f"<svg width='10' height='10' style='margin-right:.35rem'><rect width='10' height='10' "
            f"fill='{PALETTE[i % len(PALETTE)]}'/></svg>")


def _bar_chart(rows: list[dict], labels: list[str]) -> str:
    """One small chart per suite: its primary metric per model on an axis from 0 (to 1 for fractions), with
    ticks, the 95% interval as a whisker, and a mark at the value so a zero is visible."""
    return "".join(_suite_chart(row, labels) for row in rows)


def _suite_chart(row: dict, labels: list[str]) -> str:
    bar_h, left, width, top = 16, 90, 360, 18
    cells = [c for c in row["cells"] if c is not None]
    high = max([1.0] + [c["value"] for c in cells] + [c["ci"][1] for c in cells if c.get("ci")])
    top_tick = 1.0 if high <= 1.0 else float(int(high) + 1)
    x = lambda v: left + max(0.0, min(top_tick, v)) / top_tick * width  # noqa: E731
    height = top + len(labels) * bar_h + 26
    name = f"{row['suite']} · {row['metric']}"
    out = [f"<figure style='display:inline-block;margin:.3rem 1.2rem .3rem 0'><svg width='{left + width + 70}' "
           f"height='{height}' role='img' aria-label='{escape(name)}' style='font-size:11px'>",
           f"<text x='0' y='12' font-weight='600'>{escape(name)}</text>"]
    axis_y = top + len(labels) * bar_h + 2
    for i in range(5):
        value = top_tick * i / 4
        tx = x(value)
        out.append(f"<line x1='{tx:.1f}' x2='{tx:.1f}' y1='{top}' y2='{axis_y + 4}' stroke='#d0d7de'/>"
                   f"<text x='{tx:.1f}' y='{axis_y + 15}' text-anchor='middle' class='tick'>{value:g}</text>")
    out.append(f"<line x1='{left}' x2='{left + width}' y1='{axis_y}' y2='{axis_y}' stroke='#656d76'/>")
    for i, cell in enumerate(row["cells"]):
        y = top + i * bar_h
        out.append(f"<text x='{left - 6}' y='{y + bar_h - 5}' text-anchor='end'>{escape(labels[i])}</text>")
        if cell is None:
            out.append(f"<text x='{left + 4}' y='{y + bar_h - 5}' class='muted'>not run</text>")
            continue
        color = PALETTE[i % len(PALETTE)]
        out.append(f"<rect x='{left}' y='{y + 2}' width='{x(cell['value']) - left:.1f}' height='{bar_h - 5}' "
                   f"fill='{color}' opacity='.85'><title>{escape(labels[i])}: {escape(cell['text'])}</title></rect>"
                   f"<rect x='{x(cell['value']) - 1:.1f}' y='{y + 1}' width='2' height='{bar_h - 3}' fill='#1f2328'/>")
        if cell.get("ci"):
            lo, hi, mid = x(cell["ci"][0]), x(cell["ci"][1]), y + bar_h / 2
            out.append(f"<line x1='{lo:.1f}' x2='{hi:.1f}' y1='{mid}' y2='{mid}' stroke='#1f2328'/>"
                       f"<line x1='{lo:.1f}' x2='{lo:.1f}' y1='{mid - 3}' y2='{mid + 3}' stroke='#1f2328'/>"
                       f"<line x1='{hi:.1f}' x2='{hi:.1f}' y1='{mid - 3}' y2='{mid + 3}' stroke='#1f2328'/>")
        out.append(f"<text x='{left + width + 6}' y='{y + bar_h - 5}'>{cell['value']:.3f}</text>")
    n = cells[0].get("n") if cells else None
    out.append(f"</svg><figcaption class='muted' style='font-size:.75rem'>bars: value · whiskers: 95% interval"
               f"{f' · n={n}' if n else ''}</figcaption></figure>")
    return "".join(out)


def _loss_chart(stage: str, rows: list[dict]) -> str:
    """Training loss (line) and validation loss (dashed, dots) against the step, on labelled axes."""
    series = {key: [(r["step"], r[key]) for r in rows if key in r and r.get("step") is not None]
              for key in ("loss", "eval_loss")}
    points = [p for s in series.values() for p in s]
    if not points:
        return ""
    left, top, width, height = 50, 20, 360, 140
    steps, losses = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1
    y0, y1 = min(losses), max(losses) if max(losses) > min(losses) else min(losses) + 1
    x = lambda v: left + (v - x0) / (x1 - x0) * width  # noqa: E731
    y = lambda v: top + height - (v - y0) / (y1 - y0) * height  # noqa: E731
    out = [f"<figure style='display:inline-block;margin:.3rem 1.2rem .3rem 0'><svg width='{left + width + 20}' "
           f"height='{top + height + 34}' role='img' aria-label='{escape(stage)} loss' style='font-size:11px'>",
           f"<text x='0' y='12' font-weight='600'>{escape(stage)}</text>",
           f"<line x1='{left}' x2='{left}' y1='{top}' y2='{top + height}' stroke='#656d76'/>",
           f"<line x1='{left}' x2='{left + width}' y1='{top + height}' y2='{top + height}' stroke='#656d76'/>"]
    for value in (y0, (y0 + y1) / 2, y1):
        out.append(f"<text x='{left - 4}' y='{y(value) + 4:.1f}' text-anchor='end' class='tick'>{value:.3g}</text>")
    for value in (x0, (x0 + x1) / 2, x1):
        out.append(f"<text x='{x(value):.1f}' y='{top + height + 14}' text-anchor='middle' class='tick'>{value:g}</text>")
    out.append(f"<text x='{left + width / 2}' y='{top + height + 28}' text-anchor='middle' class='tick'>step</text>")
    styles = {"loss": ("#2f6fbd", ""), "eval_loss": ("#c77d1a", " stroke-dasharray='4 3'")}
    for key, pts in series.items():
        if not pts:
            continue
        color, dash = styles[key]
        path = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in pts)
        out.append(f"<polyline points='{path}' fill='none' stroke='{color}' stroke-width='1.5'{dash}/>")
        out += [f"<circle cx='{x(a):.1f}' cy='{y(b):.1f}' r='2' fill='{color}'><title>{key} {b:.4f} at step {a}</title></circle>"
                for a, b in pts]
    out.append("</svg><figcaption class='muted' style='font-size:.75rem'><span style='color:#2f6fbd'>— training loss</span> "
               "· <span style='color:#c77d1a'>- - validation loss</span></figcaption></figure>")
    return "".join(out)


def _markdown(text: str) -> str:
    """The pipeline's extra sections are Markdown; raw HTML in them is escaped, not passed through."""
    try:
        from markdown_it import MarkdownIt
    except ImportError:  # markdown-it-py comes with rich/mlflow; without it, show the text as is
        return f"<pre>{escape(text)}</pre>"
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
