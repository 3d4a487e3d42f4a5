"""`run_suites_endpoint`: the suites through lm-eval's `local-completions` client against a real server
on the tiny model score exactly what the in-process `hf` backend scores on the same model directory."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from eval.harness import run_suites, run_suites_endpoint
from recipes.errors import LatheError
from recipes.schema import SuiteConfig
from tests.serving.conftest import MODEL_NAME, running_server
from tests.tiny_model import CONTEXT

# 0-shot: a 5-shot MMLU prompt is longer than the tiny model's 2048-token context, and a server can take
# at most context-1 prompt tokens (it must generate one), one less than the hf backend keeps; scores on
# truncated prompts then differ in the third decimal (see eval/README.md). Untruncated, they are equal.
SUITES = [SuiteConfig(name="skills"),
          SuiteConfig(name="mmlu", subjects=["abstract_algebra", "anatomy"], limit=2, num_fewshot=0)]


@pytest.fixture(scope="module")
def base_url(tiny_model_dir):
    with running_server(model_dir=tiny_model_dir, model_name=MODEL_NAME) as base:
        yield f"{base}/v1"


@pytest.fixture(scope="module")
def both_runs(base_url, tiny_model_dir, shared_data, skills_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("endpoint_eval")
    served = run_suites_endpoint(base_url, SUITES, model_name=MODEL_NAME, tokenizer=tiny_model_dir,
                                 mirror_dir=shared_data, skills_file=skills_file, out_dir=root / "served",
                                 cache_dir=root / "cache", label="served")
    local = run_suites(tiny_model_dir, SUITES, mirror_dir=shared_data, skills_file=skills_file,
                       out_dir=root / "local", batch_size=4, label="local")
    return {"served": served, "local": local, "root": root}


def _samples(out_dir: Path, suite: str) -> list[dict]:
    rows = [json.loads(line) for line in (out_dir / "samples" / f"{suite}.jsonl").read_text().splitlines()]
    return sorted(rows, key=lambda r: (r["task"], r["doc_id"]))


def test_results_record_the_endpoint_backend(both_runs, base_url, tiny_model_dir):
    served = both_runs["served"]
    assert (served["backend"], served["endpoint"], served["served_model"]) == ("local-completions", base_url, MODEL_NAME)
    assert served["model_dir"] is None and served["served_root"] == str(tiny_model_dir)
    stored = json.loads((both_runs["root"] / "served" / "results.json").read_text())
    for suite in ("skills", "mmlu"):
        settings = stored["suites"][suite]["settings"]
        assert settings["backend"] == "local-completions" and settings["endpoint"] == base_url
        assert settings["served_model"] == MODEL_NAME and settings["context_length"] == CONTEXT
        assert settings["tokenizer_dir"] == str(Path(tiny_model_dir).resolve())
        assert both_runs["local"]["suites"][suite]["settings"]["backend"] == "hf"


def test_mmlu_through_the_server_equals_the_hf_backend(both_runs):
    served, local = both_runs["served"]["suites"]["mmlu"], both_runs["local"]["suites"]["mmlu"]
    assert served["status"] == local["status"] == "ok"
    assert served["metrics"]["acc"] == local["metrics"]["acc"]
    assert served["settings"]["n_samples"] == local["settings"]["n_samples"]
    assert served["settings"]["n_samples"]["scored"] == 4  # 2 subjects × limit 2
    rows_served, rows_local = (_samples(both_runs["root"] / which, "mmlu") for which in ("served", "local"))
    assert len(rows_served) == len(rows_local) == 4
    for got, want in zip(rows_served, rows_local):
        assert (got["task"], got["doc_id"], got["prompt"]) == (want["task"], want["doc_id"], want["prompt"])
        assert got["response"] == want["response"] and got["correct"] == want["correct"]  # the picked choice
        assert got["loglikelihoods"] == pytest.approx(want["loglikelihoods"], abs=1e-4)


def test_skills_are_rendered_with_the_chat_template_client_side(both_runs):
    served, local = both_runs["served"]["suites"]["skills"], both_runs["local"]["suites"]["skills"]
    assert served["status"] == "ok" and served["settings"]["apply_chat_template"] is True
    assert served["metrics"]["exact_match"] == local["metrics"]["exact_match"]
    rows_served, rows_local = (_samples(both_runs["root"] / which, "skills") for which in ("served", "local"))
    assert [r["prompt"] for r in rows_served] == [r["prompt"] for r in rows_local]
    assert rows_served[0]["prompt"].startswith("<|im_start|>system\n")  # the tokenizer's ChatML template
    assert rows_served[0]["prompt"].endswith("<|im_start|>assistant\n")
    assert [r["response"] for r in rows_served] == [r["response"] for r in rows_local]  # greedy: same tokens


def test_cache_is_keyed_by_endpoint_and_served_model(both_runs, base_url, tiny_model_dir, shared_data, skills_file):
    root = both_runs["root"]
    again = run_suites_endpoint(base_url, SUITES, model_name=MODEL_NAME, tokenizer=tiny_model_dir,
                                mirror_dir=shared_data, skills_file=skills_file, out_dir=root / "again",
                                cache_dir=root / "cache")
    assert {s: e["cache"] for s, e in again["suites"].items()} == {"skills": "hit", "mmlu": "hit"}
    assert again["model_hash"] == both_runs["served"]["model_hash"]
    from eval.endpoint import connect

    model = connect(base_url, MODEL_NAME, tiny_model_dir)
    identities = {model.identity}
    for change in ({"url": base_url.replace("127.0.0.1", "localhost")}, {"model_name": "other"}):
        for key, value in change.items():
            setattr(model, key, value)
        identities.add(model.identity)
    assert len(identities) == 3


def test_clear_errors(base_url, tiny_model_dir, tmp_path):
    def attempt(url=base_url, model=MODEL_NAME, tokenizer=tiny_model_dir):
        return run_suites_endpoint(url, SUITES, model_name=model, tokenizer=tokenizer, mirror_dir=tmp_path,
                                   skills_file=None, out_dir=tmp_path / "out")

    with pytest.raises(LatheError, match=r"does not serve a model named 'nope' \(it serves: 'tiny'\)"):
        attempt(model="nope")
    with pytest.raises(LatheError, match="without the route"):
        attempt(url=f"{base_url}/completions")
    with pytest.raises(LatheError, match="--tokenizer .*no tokenizer.json"):
        attempt(tokenizer=tmp_path)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    with pytest.raises(LatheError, match="cannot read .*Is the server running"):
        attempt(url=closed)
    assert not (tmp_path / "out").exists()  # nothing written before the endpoint checks pass


def test_bos_is_added_where_the_hf_backend_adds_it(tiny_model_dir, shared_data, tmp_path):
    """A tokenizer that prepends BOS (as Llama 3's does): lm-eval's API client adds no special tokens
    unless told, the hf backend lets the tokenizer add them; the scores must still agree."""
    import shutil

    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "bos_model"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bos = (tokenizer.bos_token, tokenizer.bos_token_id)
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single=f"{bos[0]} $A", special_tokens=[bos])
    tokenizer.save_pretrained(model_dir)
    assert AutoTokenizer.from_pretrained(model_dir)("x").input_ids[0] == bos[1]
    mmlu = [SuiteConfig(name="mmlu", subjects=["anatomy"], limit=2, num_fewshot=0)]
    with running_server(model_dir=model_dir, model_name=MODEL_NAME) as base:
        served = run_suites_endpoint(f"{base}/v1", mmlu, model_name=MODEL_NAME, tokenizer=model_dir,
                                     mirror_dir=shared_data, skills_file=None, out_dir=tmp_path / "served")
    run_suites(model_dir, mmlu, mirror_dir=shared_data, skills_file=None, out_dir=tmp_path / "local", batch_size=4)
    assert served["suites"]["mmlu"]["settings"]["add_bos_token"] is True
    for got, want in zip(_samples(tmp_path / "served", "mmlu"), _samples(tmp_path / "local", "mmlu"), strict=True):
        assert got["loglikelihoods"] == pytest.approx(want["loglikelihoods"], abs=1e-4)
