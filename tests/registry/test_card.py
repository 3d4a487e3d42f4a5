"""The model card is plain Markdown built from the recipe, metrics and data manifest."""

from __future__ import annotations

from recipes import Recipe
from registry.card import model_card


def test_card_has_every_section_and_an_eval_table_with_deltas():
    recipe = Recipe.model_validate({"name": "demo", "data": {"sft": [{"path": "data/extra.jsonl"}]},
                                    "sft": {"max_steps": 20, "learning_rate": 1e-3}, "preference": {"enabled": False}})
    manifest = {"rows": {"train": 230, "validation": 26}, "rejected": 0, "sha256": "ab" * 32, "note": "a|b"}
    card = model_card("lathe-default", "3", recipe=recipe, metrics={"skills/exact_match": 0.66, "mmlu/acc": 0.25},
                      data_manifest=manifest, baseline_metrics={"skills/exact_match": 0.02})
    assert card.startswith("# lathe-default — version 3\n")
    for heading in ("## Base model", "## Data", "## Training", "## Evaluation", "## Intended use", "## Limitations"):
        assert f"\n{heading}\n" in card
    assert "`embedded:smollm2-135m-instruct`" in card and "recipe `demo`" in card
    assert "- sft: `data/extra.jsonl`" in card and "256 SFT rows" in card
    assert "| rows.train | 230 |" in card and "a\\|b" in card  # pipes escaped so the table holds
    assert "- sft: lora, lr 0.001, 20 steps" in card and "r=16" in card
    assert "- preference: skipped" in card
    assert "| skills/exact_match | 0.0200 | 0.6600 | +0.6400 |" in card
    assert "| mmlu/acc | — | 0.2500 | — |" in card


def test_card_without_version_baseline_or_manifest():
    card = model_card("m", recipe={"model": {"id": "org/base"}}, metrics={})
    assert card.startswith("# m\n") and "`org/base`" in card
    assert "No evaluation results were recorded." in card and "From the data manifest" not in card
