"""`python -m eval run` by hand: suites read from a file written as a recipe's eval.suites (custom suites
included), run through the same harness as the pipeline; a bad entry is refused naming the file and the entry."""

from __future__ import annotations

import json

import yaml

from eval.__main__ import main
from tests.eval.conftest import write_jsonl


def test_a_suites_file_runs_the_users_own_suite(tiny_model_dir, tmp_path, capsys):
    rows = write_jsonl(tmp_path / "colours.jsonl", [
        {"prompt": "Sky colour?", "choices": ["blue", "green", "red"], "answer": "blue"},
        {"prompt": "2+2?", "choices": ["3", "4"], "answer": 1},
        {"prompt": "Grass?", "choices": ["green", "pink"], "answer": 0}])
    suites = tmp_path / "suites.yaml"
    suites.write_text(yaml.safe_dump([{"name": "colours", "file": str(rows), "kind": "choice"}]))
    code = main(["run", str(tiny_model_dir), "--suites-file", str(suites), "--out", str(tmp_path / "out"),
                 "--mirror", str(tmp_path), "--label", "tiny"])
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(results["suites"]) == ["colours"] and results["suites"]["colours"]["status"] == "ok"
    assert json.loads(capsys.readouterr().out)["colours/acc"] in (0.0, 1 / 3, 2 / 3, 1.0)  # 3 items


def test_a_bad_suites_file_names_the_file_and_the_entry(tiny_model_dir, tmp_path, capsys):
    suites = tmp_path / "suites.yaml"
    suites.write_text(yaml.safe_dump({"eval": {"suites": [{"name": "mmlu", "limit": 2},
                                                          {"name": "mine", "kind": "choice"}]}}))  # a recipe
    code = main(["run", str(tiny_model_dir), "--suites-file", str(suites), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and f"--suites-file {suites}: suite #2 ('mine')" in err and "file" in err, err
    suites.write_text("just text")
    assert main(["run", str(tiny_model_dir), "--suites-file", str(suites), "--out", str(tmp_path / "out")]) == 2
    assert "expected a list of suites" in capsys.readouterr().err
