"""The report as a person sees it: rendered by Debian's headless Chromium (skipped where it is not installed;
.ci/run installs it), checked on the rendered page — the verdict first, one chart per suite with its axis
ticks, loss curves, and every character covered by an installed font (no missing-glyph boxes)."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from eval.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


def render(url: str) -> str:
    """The DOM after Chromium has loaded and laid out the page."""
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                           "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "<body" in done.stdout, done.stderr[-2000:]
    return done.stdout


class _Page(HTMLParser):
    """Visible text in document order, the sections, and each chart's tick labels."""

    def __init__(self):
        super().__init__()
        self.text, self.sections, self.charts, self._stack = [], [], {}, []
        self._chart = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._stack.append((tag, attrs))
        if tag == "section":
            self.sections.append(attrs.get("class"))
        if tag == "svg" and attrs.get("role") == "img":
            self._chart = attrs["aria-label"]
            self.charts[self._chart] = []

    def handle_endtag(self, tag):
        if tag == "svg":
            self._chart = None
        while self._stack and self._stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        if any(t in ("style", "title") for t, _ in self._stack):
            return
        self.text.append(data)
        if self._chart and self._stack and self._stack[-1][1].get("class") == "tick":
            self.charts[self._chart].append(data)


def _entry(value: float) -> dict:
    return {"status": "ok", "primary": "exact_match", "metrics": {"exact_match": value},
            "settings": {"limit": 20, "n_samples": {"scored": 20, "available": 40}, "data_files": {}},
            "examples": {"right": [], "wrong": [{"prompt": "Say hi", "target": "Hello!", "response": "👋 hi ✔"}]}}


def test_the_rendered_report_opens_on_the_verdict_with_a_chart_per_suite_and_no_missing_glyphs(tmp_path):
    results = {label: {"suites": {"skills": _entry(v), "tickets": _entry(v / 2)}} for label, v in
               (("base", 0.1), ("tuned", 0.6))}
    verdict = ("**lathe-default version 2: PROMOTED to champion** — judged against the base model\n\n"
               "- ✔ pass · **primary**: skills/exact_match: candidate 0.6 beats base 0.1\n- ✘ FAIL · **guard**: none")
    _, html = write_report(results, tmp_path, verdict=verdict,
                           curves={"sft": [{"step": 5, "loss": 2.0}, {"step": 10, "loss": 1.2, "eval_loss": 1.4}]})
    page = _Page()
    page.feed(render(html.resolve().as_uri()))
    text = " ".join(" ".join(page.text).split())
    assert page.sections[0] == "verdict"
    assert text.index("PROMOTED to champion") < text.index("Models") < text.index("Summary")
    assert set(page.charts) >= {"skills · exact_match", "tickets · exact_match", "sft loss"}
    for suite in ("skills", "tickets"):
        assert page.charts[f"{suite} · exact_match"] == ["0", "0.25", "0.5", "0.75", "1"]
    assert "⚠ skills: scored on 20 items (limit 20 of 40 available)" in text

    # Every non-ASCII character on the page is in some installed font (else a box is drawn). The model's
    # own answers are data, not the report's: an emoji there may legitimately lack a font.
    ours = text.replace("👋", "")
    missing = [ch for ch in sorted(set(ours)) if ord(ch) > 127 and not _has_glyph(ch)]
    assert not missing, f"characters without a font on this machine: {missing}"


def _has_glyph(ch: str) -> bool:
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        pytest.skip("fontconfig's fc-list is not installed")
    found = subprocess.run([fc_list, f":charset={ord(ch):x}", "family"], capture_output=True, text=True, timeout=30)
    return bool(found.stdout.strip())
