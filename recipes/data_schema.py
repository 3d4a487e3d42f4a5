"""The recipe's `data:` section: the datasets, the generated sets (skills, BFCL tools), replay, the
split and the bad-row policy. Part of the one recipe schema (recipes/schema.py re-exports them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recipes.section import Section


class DatasetSpec(Section):
    path: str
    """Local .json/.jsonl/.jsonl.gz/.parquet file, or .txt (continued pre-training: one document per
    paragraph); relative paths resolve against the project root."""
    format: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text", "tokens",
                    "openai_preference", "preference", "hh_rlhf"] = "auto"
    """Row layout; `auto` detects it from the keys of each row. SFT: `messages` (OpenAI / Together chat,
    with tools, tool_calls, tool results and per-message weight), `sharegpt`, `alpaca`,
    `prompt_completion` (Together instruction), `text` (Together / continued pre-training), `hh_rlhf`
    (SFT on the chosen transcript, every assistant turn), `tokens`
    (pre-tokenized input_ids with optional labels / attention_mask). Preference: `openai_preference`
    (OpenAI / Together DPO: input, preferred_output, non_preferred_output), `preference`
    (prompt/chosen/rejected), `sharegpt`, `hh_rlhf`."""
    weight: float = Field(1.0, gt=0)
    """Mixture weight: rows are sampled with replacement to this multiple of the set's size (1.0 = as is)."""
    max_rows: int | None = Field(None, gt=0)
    """Keep at most this many rows of this set (after validation), for quick runs."""


class SkillsConfig(Section):
    enabled: bool = True
    """Generate the synthetic skills set (SFT rows, preference pairs and a held-out eval split)."""
    n_train: int = Field(256, gt=0)
    """Number of generated SFT training rows."""
    n_eval: int = Field(40, gt=0)
    """Number of held-out rows used by the `skills` evaluation suite (never trained on)."""
    n_preference: int = Field(128, ge=0)
    """Number of generated preference pairs (correct+concise chosen vs wrong or rambling rejected)."""
    seed: int = 1234
    """Seed of the generator: the same seed gives byte-identical files."""


class ReplayConfig(Section):
    enabled: bool = False
    """Mix the base model's own greedy answers to general prompts (eval/prompts/general.jsonl, split
    `replay`; never the retention suite's held-out prompts) into SFT training: self-distillation replay,
    which keeps the general chat behaviour the task data would otherwise train away. Generated once per
    base model by the data stage and cached by its content hash (.lathe/base-answers)."""
    share: float = Field(0.5, gt=0, lt=1)
    """Fraction of the SFT training rows that are replay rows (answers are cycled when more rows are
    needed than there are prompts)."""
    max_new_tokens: int = Field(96, gt=0)
    """Longest generated answer, in tokens."""
    limit: int | None = Field(None, gt=0)
    """Use only the first N replay prompts (None: all of them, 136)."""
    preference_share: float = Field(0.0, ge=0, lt=1)
    """Fraction of the preference training pairs that are replay pairs: chosen = the base's own answer to a
    general prompt, rejected = that answer cut after its first sentence. Task pairs that prefer short
    answers (the skills set's "concise over rambling") otherwise teach the model to cut every answer short.
    0: none."""


class ToolsDataConfig(Section):
    enabled: bool = False
    """Train on BFCL v4 function-calling items (from `eval.mirror_dir`/bfcl) that the `tools` eval suite
    holds out from itself: OpenAI chat rows with tools and the expected calls (eval/tools.py)."""
    subsets: list[Literal["simple_python", "multiple", "parallel"]] = Field(default_factory=lambda: ["simple_python"])
    """BFCL sets to train on (their non-held-out half)."""


class EvalSplitConfig(Section):
    fraction: float = Field(0.0, ge=0, lt=1)
    """Share of the chat rows of your own SFT datasets (`data.sft`) held out as an evaluation set,
    `artifacts/data/eval_split.jsonl` (OpenAI chat rows ending with the reference answer), which a custom
    suite reads: `eval.suites: [{name: holdout, file: artifacts/data/eval_split.jsonl, kind: generate,
    metric: exact_match}]`. Training rows equal to a held-out row, or with the same normalised prompt
    (case and whitespace), are dropped and counted. 0: no split."""
    max_rows: int | None = Field(None, gt=0)
    """At most this many held-out rows (an eval set need not grow with the training set)."""


class DataConfig(Section):
    sft: list[DatasetSpec] = Field(default_factory=list)
    """Extra SFT datasets mixed with the skills set."""
    preference: list[DatasetSpec] = Field(default_factory=list)
    """Extra preference datasets mixed with the generated pairs."""
    sft_validation: list[DatasetSpec] = Field(default_factory=list)
    """Your own SFT validation rows (an OpenAI/Together `validation_file`): the validation split as written,
    checked like training rows; with it, no SFT rows are split off by `validation_fraction`."""
    preference_validation: list[DatasetSpec] = Field(default_factory=list)
    """Your own preference validation pairs, as `sft_validation` is for SFT."""
    skills: SkillsConfig = Field(default_factory=SkillsConfig)
    """The generated skills set: something the base model fails today and can learn in minutes."""
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    """Self-distillation replay mixed into SFT so the tuned model keeps what the base could already do."""
    tools: ToolsDataConfig = Field(default_factory=ToolsDataConfig)
    """Function-calling rows from BFCL (off by default; recipes/tools-135m.yaml turns it on)."""
    eval_split: EvalSplitConfig = Field(default_factory=EvalSplitConfig)
    """A held-out evaluation set carved from your own SFT data (see EvalSplitConfig)."""
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    """Fraction of each training set held out for validation loss (unless that set's `*_validation` is given)."""
    on_bad_row: Literal["error", "skip"] = "error"
    """`error`: stop at the first bad row naming file, line and reason. `skip`: write each bad row with
    its reason to `artifacts/data/rejects.jsonl`, count them in the manifest, and go on."""
    dedupe: bool = True
    """Drop exact duplicate rows (counted in the manifest)."""
    seed: int = 42
    """Seed for shuffling, splitting and mixture sampling."""
