"""The recipe's `eval:` section: which suites judge each model — the built-in benchmarks and custom suites
built from the user's own JSONL files (eval/custom.py). Part of the one recipe schema (recipes/schema.py
re-exports it)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from recipes.section import Section

BUILTIN_SUITES = ("skills", "mmlu", "gsm8k", "humaneval", "hellaswag", "retention", "tools")

# The headline metrics each built-in suite reports (eval.harness.flat_metrics keys `suite/metric`); the gate
# may name these, plus per-part breakdowns `suite.part/metric` and `…_stderr`. Custom suites: `SuiteConfig.metrics`.
SUITE_METRICS = {
    "skills": ("exact_match",),
    "mmlu": ("acc", "acc_macro"),
    "gsm8k": ("exact_match_strict-match", "exact_match_flexible-extract"),
    "humaneval": ("pass_at_1",),
    "hellaswag": ("acc_norm", "acc"),
    "retention": ("kl", "nll_gap"),
    "tools": ("acc", "simple_python_acc", "multiple_acc", "parallel_acc"),
}
GENERATE_METRICS = ("exact_match", "contains", "regex", "json_schema", "tool_call")
JUDGE_METRIC = {"score10": "judge_score", "pass_fail": "judge_pass"}
"""Single-answer judge metric per scale; a pairwise judge reports `win_rate`. Every judge also reports
`judge_unparsed`, the share of verdicts that could not be read (scored as the worst verdict)."""


class JudgeConfig(Section):
    """An LLM judge behind any OpenAI-compatible endpoint. Nothing here has a default judge: the endpoint and
    the model are the user's choice, and both are recorded with every score."""

    endpoint: str
    """Base URL of the judge's OpenAI-compatible API, e.g. http://127.0.0.1:8001/v1 or https://api.openai.com/v1."""
    model: str
    """The judge model's name at that endpoint."""
    api_key_env: str | None = None
    """Environment variable holding the judge's API key (never the key itself: recipes are committed)."""
    mode: Literal["single", "pairwise"] = "single"
    """`single`: the judge grades each answer alone (with the row's `answer` as a reference when given).
    `pairwise`: the judge picks the better of the model's answer and its opponent's (`against`), in an
    order randomised per item (seeded) so position bias cancels; reports `win_rate` (win 1, tie ½, loss 0)."""
    against: Literal["reference", "baseline"] = "reference"
    """Pairwise opponent: the row's reference `answer`, or the `baseline` model's answer to the same row —
    the champion when there is one, else the base ("champion zero"); the baseline itself scores ½ on every
    row. Identical answers are a tie without asking the judge. `baseline` runs in the evaluate stage only."""
    scale: Literal["score10", "pass_fail"] = "score10"
    """Single mode: a 1–10 rating (`judge_score` = rating / 10) or PASS/FAIL (`judge_pass`)."""
    rubric: str
    """What a good answer is, in the user's words; inserted into the judge prompt (eval/prompts/judge_*.txt)."""
    structured: bool = True
    """Ask for the verdict with `response_format: json_schema`, so it always parses on servers with structured
    output (OpenAI, vLLM, `lathe serve`); off: the verdict is read from text ("[[7]]", "[[PASS]]", "[[A]]")."""
    max_tokens: int = Field(512, gt=0)
    """Cap on the judge's reply."""


class SuiteConfig(Section):
    name: str
    """A built-in suite — skills, mmlu, gsm8k, humaneval, hellaswag, retention, tools — or the name of a
    custom suite read from `file` (lowercase letters, digits, `-`, `_`). `retention` is not a benchmark:
    KL(base ‖ model) on the base model's own answers to held-out general prompts (eval/retention.py), 0 for
    the base; it measures forgetting. `tools`: BFCL v4 function calls asked as `lathe serve` asks, scored by
    BFCL's rule on held-out items (eval/tools.py)."""
    num_fewshot: int | None = None
    """Few-shot examples (None: the suite's standard count: MMLU 5, GSM8K 5, HumanEval 0, HellaSwag 10)."""
    limit: int | None = Field(None, gt=0)
    """Items per task (None: all). MMLU applies it per subject."""
    subjects: list[str] | None = None
    """MMLU subjects to run (None: all 57); for `tools`, the BFCL sets (None: simple_python and multiple)."""
    max_gen_toks: int | None = Field(None, gt=0)
    """Cap on generated tokens for generation suites (None: the task's own; 256 for custom suites); for
    `retention`, the length of the base model's reference answers (None: 96)."""
    file: str | None = None
    """Custom suites: a JSONL file of rows in OpenAI chat format, `{"messages": [...], "answer": ...}` (or
    `{"prompt": "...", "answer": ...}`), rendered with the model's chat template as `lathe serve` renders
    them (eval/README.md). Relative paths resolve against the project root."""
    kind: Literal["generate", "choice", "judge"] | None = None
    """Custom suites: `generate` (greedy answer scored by `metric`), `choice` (log-likelihood of each of the
    row's `choices`, lm-eval's multiple-choice path: acc, acc_norm) or `judge` (an LLM judge grades the answer)."""
    metric: Literal["exact_match", "contains", "regex", "json_schema", "tool_call"] | None = None
    """`generate` suites: `exact_match` (normalised answer equals the normalised reference), `contains` (the
    reference occurs in the answer), `regex` (the row's `answer` is a Python regex searched in the answer),
    `json_schema` (the answer parses as JSON and validates against the row's `schema` or the suite's
    `json_schema`), `tool_call` (the answer's tool calls match the row's expected calls by BFCL's rule)."""
    extract: str | None = None
    """A regex applied to the answer before scoring: its first group (or whole match) is what is scored; no
    match scores 0. E.g. `"(?i)answer:\\s*(.+)"`."""
    ignore_case: bool = True
    """exact_match / contains: compare case-insensitively."""
    ignore_punctuation: bool = True
    """exact_match / contains: drop ASCII punctuation before comparing."""
    ignore_whitespace: bool = True
    """exact_match / contains: collapse runs of whitespace to one space (ends are always stripped)."""
    json_schema: dict | None = None
    """`json_schema` metric: the schema for rows without their own `schema`."""
    group_by: str | None = None
    """A row field to break the score down by (`<suite>.<value>/<metric>`, like skills per skill)."""
    judge: JudgeConfig | None = None
    """`judge` suites: the judge (required; there is no default judge)."""

    @model_validator(mode="after")
    def _suite_shape(self):
        if self.name in BUILTIN_SUITES:
            given = [f for f in ("file", "kind", "metric", "extract", "json_schema", "group_by", "judge")
                     if getattr(self, f) is not None]
            if given:
                raise ValueError(f"{self.name} is a built-in suite; {', '.join(given)} belong to custom suites "
                                 f"(give the custom suite its own name)")
            if self.name == "tools" and self.subjects and (bad := set(self.subjects) - {"simple_python", "multiple", "parallel"}):
                raise ValueError(f"tools subjects are BFCL sets (simple_python, multiple, parallel), not {sorted(bad)}")
            return self
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", self.name):
            raise ValueError(f"suite name {self.name!r}: a custom suite's name is lowercase letters, digits, '-' "
                             f"and '_' (it becomes the metric prefix `{self.name}/…`); built-in: {', '.join(BUILTIN_SUITES)}")
        if self.file is None or self.kind is None:
            raise ValueError(f"suite {self.name!r} is not built in ({', '.join(BUILTIN_SUITES)}); a custom suite needs "
                             f"`file` (your JSONL) and `kind` (generate, choice or judge)")
        if self.kind == "generate" and self.metric is None:
            raise ValueError(f"suite {self.name!r}: kind generate needs `metric` ({', '.join(GENERATE_METRICS)})")
        if self.kind != "generate" and self.metric is not None:
            raise ValueError(f"suite {self.name!r}: `metric` is for kind generate; kind {self.kind} reports "
                             f"{', '.join(self.metrics)}")
        if self.judge is not None and self.judge.against == "baseline" and self.judge.mode != "pairwise":
            raise ValueError(f"suite {self.name!r}: judge.against: baseline is for mode pairwise")
        if (self.kind == "judge") != (self.judge is not None):
            raise ValueError(f"suite {self.name!r}: " + ("kind judge needs `judge` (endpoint, model, rubric)"
                                                          if self.judge is None else "`judge` is for kind judge"))
        if self.subjects is not None or self.num_fewshot:
            raise ValueError(f"suite {self.name!r}: subjects and num_fewshot are for built-in suites")
        if self.extract is not None:
            try:
                re.compile(self.extract)
            except re.error as exc:
                raise ValueError(f"suite {self.name!r}: extract is not a valid regex: {exc}") from None
        return self

    @property
    def custom(self) -> bool:
        return self.name not in BUILTIN_SUITES

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics this suite reports, headline first (the gate may name any of them)."""
        if not self.custom:
            return SUITE_METRICS[self.name]
        if self.kind == "generate":
            return (self.metric,)
        if self.kind == "choice":
            return ("acc", "acc_norm")
        return ("win_rate" if self.judge.mode == "pairwise" else JUDGE_METRIC[self.judge.scale], "judge_unparsed")


class EvalConfig(Section):
    suites: list[SuiteConfig] = Field(default_factory=lambda: [SuiteConfig(name="skills")])
    """Suites to run on the base and the tuned model (and the champion)."""
    intermediate_suites: list[str] | None = None
    """Suites also run on intermediate models (every training stage but the last, e.g. SFT before DPO);
    None: all of them. Guard benchmarks need not be paid for on every intermediate model."""
    mirror_dir: str = "../shared/data"
    """Local benchmark mirror (layout in eval/README.md). A suite whose files are missing there is
    reported as not run, with the reason."""
    batch_size: int = Field(8, gt=0)
    """lm-eval batch size."""
    apply_chat_template: bool = False
    """Wrap prompts in the model's chat template (skills and custom suites always use it)."""
    seed: int = 1234
    """Seed for lm-eval's sampling of few-shot examples (and a pairwise judge's answer order)."""
