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
