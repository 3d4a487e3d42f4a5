"""The report: Markdown and self-contained HTML with deltas, not-run reasons, MMLU subjects and samples."""

from __future__ import annotations

import copy
from html.parser import HTMLParser

from eval.report import write_report


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.starts, self.links = [], []

    def handle_starttag(self, tag, attrs):
        self.starts.append(tag)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def test_report_markdown_and_html(full_run, tmp_path):
    base = full_run["results"]
    tuned = copy.deepcopy(base)
    tuned["label"] = "tuned"
    tuned["suites"]["skills"]["metrics"].update(exact_match=base["suites"]["skills"]["metrics"]["exact_match"] + 0.25,
                                                exact_match_stderr=0.0)
    base_skills = copy.deepcopy(base)
    base_skills["suites"]["skills"]["metrics"]["exact_match_stderr"] = 0.0
    tuned["suites"]["mmlu"]["breakdown"]["subject"]["anatomy"]["acc"] = 0.125
    tuned["suites"]["gsm8k"] = {"status": "not_run", "reason": "gsm8k: data not found in the mirror: /m/gsm8k/test.jsonl",
                                "fix": "put the files under the mirror"}
    md_path, html_path = write_report({"base": base_skills, "tuned": tuned}, tmp_path,
                                      extra_sections={"Promotion decision": "**promoted**: tuned → champion"})
    md, html = md_path.read_text(), html_path.read_text()
    anatomy_delta = 0.125 - base["suites"]["mmlu"]["breakdown"]["subject"]["anatomy"]["acc"]
    for text in (md, html):
        assert "+0.250 (±0.000)" in text                       # skills Δ tuned vs base
        assert f"{anatomy_delta:+.3f}" in text                  # MMLU per-subject Δ
        assert "anatomy" in text and "college_mathematics" in text
        assert "data not found in the mirror: /m/gsm8k/test.jsonl" in text and "put the files under the mirror" in text
        assert "Promotion decision" in text and "champion" in text
        assert "Say HI" in text                                 # a skills sample output
        assert "0.4.13" in text                                 # lm-eval version in the settings
    assert "<strong>promoted</strong>" in html                  # the extra section rendered as Markdown
    tags = _Tags()
    tags.feed(html)
    assert "script" not in tags.starts and "link" not in tags.starts and tags.links == []
    assert "http://" not in html and "https://" not in html
    assert "svg" in tags.starts and "style" in tags.starts      # inline chart and CSS


def test_small_samples_show_their_intervals_and_only_significant_paired_deltas_are_coloured(tmp_path):
    """n per score, Wilson 95% intervals, a warning for a limited suite, and Δ coloured only when the paired
    comparison says p < 0.05: 0.200 → 0.400 on 10 items is not a finding."""
    from eval.paired import wilson

    def results(value: float) -> dict:
        return {"suites": {"mine": {"status": "ok", "primary": "exact_match",
                                    "metrics": {"exact_match": value, "exact_match_stderr": 0.13},
                                    "settings": {"limit": 10, "n_samples": {"scored": 10, "available": 500},
                                                 "data_files": {}}}}}

    paired = {"tuned": {"mine/exact_match": {"delta": 0.2, "se": 0.13, "ci95": [-0.05, 0.45], "p_value": 0.38}}}
    md_path, html_path = write_report({"base": results(0.2), "tuned": results(0.4)}, tmp_path, paired=paired)
    md, html = md_path.read_text(), html_path.read_text()
    lo, hi = wilson(4, 10)
    assert f"0.400 [{lo:.2f}, {hi:.2f}] n=10" in md
    assert "+0.200 [-0.050, +0.450] p=0.38 (n.s.)" in md
    assert f"mine: scored on 10 items (limit 10 of 500 available); its 95% interval is {wilson(2, 10)[1] - wilson(2, 10)[0]:.2f} wide" in md
    assert "class='num muted'>+0.200" in html and "class='num pos'" not in html  # not significant: not green
    assert "class='warn'>⚠ mine: scored on 10 items" in html

    assert "answers empty" not in md  # no generation record: nothing claimed

    tuned = results(0.4)
    tuned["suites"]["mine"]["generation"] = {"n": 10, "empty": 3, "hit_max_tokens": 2, "max_gen_toks": 8}
    md = write_report({"base": results(0.2), "tuned": tuned}, tmp_path / "failures")[0].read_text()
    assert "mine (tuned): 3 of 10 answers empty, 2 cut at max_gen_toks=8" in md

    paired["tuned"]["mine/exact_match"]["p_value"] = 0.01
    _, html_path = write_report({"base": results(0.2), "tuned": results(0.4)}, tmp_path / "sig", paired=paired)
    assert "class='num pos'>+0.200" in html_path.read_text()


def test_one_chart_per_suite_with_an_axis_ticks_and_a_visible_zero(tmp_path):
    def results(value: float) -> dict:
        entry = lambda v: {"status": "ok", "primary": "acc", "metrics": {"acc": v},  # noqa: E731
                           "settings": {"n_samples": {"scored": 50, "available": 50}, "data_files": {}}}
        return {"suites": {"alpha": entry(value), "beta": entry(0.0)}}

    _, html_path = write_report({"base": results(0.5), "tuned": results(0.75)}, tmp_path)
    html = html_path.read_text()
    for suite in ("alpha", "beta"):
        chart = html[html.index(f"aria-label='{suite} · acc'"):]
        chart = chart[:chart.index("</svg>")]
        for tick in ("0", "0.25", "0.5", "0.75", "1"):
            assert f"class='tick'>{tick}</text>" in chart
        assert chart.count("width='2'") == 2  # a value mark per model: a score of 0 is still drawn
        assert chart.count("stroke='#1f2328'") == 6  # a 95% whisker (line and two caps) per model


def test_loss_curves_are_drawn_per_training_stage(tmp_path):
    results = {"suites": {"alpha": {"status": "ok", "primary": "acc", "metrics": {"acc": 0.5},
                                    "settings": {"n_samples": {"scored": 200}, "data_files": {}}}}}
    curves = {"sft": [{"step": 5, "loss": 2.0}, {"step": 10, "loss": 1.5, "eval_loss": 1.8}, {"step": 10, "eval_loss": 1.7}],
              "preference": []}
    _, html_path = write_report({"base": results}, tmp_path, curves=curves)
    html = html_path.read_text()
    chart = html[html.index("aria-label='sft loss'"):]
    chart = chart[:chart.index("</svg>")]
    assert chart.count("<polyline") == 2  # training and validation
    assert "loss 1.5000 at step 10" in chart and "eval_loss 1.7000 at step 10" in chart
    assert "aria-label='preference loss'" not in html  # a stage with nothing logged draws nothing
