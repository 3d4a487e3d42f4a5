"""lm-eval's `local-completions` client scores a log-likelihood task through the server exactly as
the in-process `hf` backend scores it on the same model."""

from __future__ import annotations

import json

import pytest

from tests.serving.conftest import MODEL_NAME

ROWS = [
    {"question": "the cat sat on the", "choices": ["mat", "dog", "sky"], "answer": 0},
    {"question": "red blue", "choices": ["green", "seven", "france"], "answer": 0},
    {"question": "one two three", "choices": ["four", "paris", "json"], "answer": 0},
    {"question": "capital of france is", "choices": ["paris", "ten", "yes"], "answer": 0},
]

TASK = """task: lathe_serving_mc
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
target_delimiter: " "
doc_to_target: answer
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_task")
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (root / "lathe_serving_mc.yaml").write_text(TASK.format(data=data))
    return root


def _evaluate(model: str, model_args: dict, task_dir) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=["lathe_serving_mc"],
                                   task_manager=TaskManager(include_path=str(task_dir)), batch_size=1,
                                   log_samples=True, bootstrap_iters=0)


def _loglikelihoods(results: dict) -> list[tuple[int, list[float]]]:
    samples = sorted(results["samples"]["lathe_serving_mc"], key=lambda s: s["doc_id"])
    return [(s["doc_id"], [resp[0][0] for resp in s["resps"]]) for s in samples]


def test_local_completions_scores_like_the_hf_backend(server, tiny_model_dir, task_dir):
    served = _evaluate("local-completions", {
        "model": MODEL_NAME, "base_url": f"{server}/v1/completions",
        # a local tokenizer: lm-eval would otherwise fetch one from the hub by the model's name
        "tokenizer_backend": "huggingface", "tokenizer": str(tiny_model_dir), "max_length": 512,
    }, task_dir)
    local = _evaluate("hf", {"pretrained": str(tiny_model_dir), "device": "cpu", "dtype": "float32"}, task_dir)

    served_ll, local_ll = _loglikelihoods(served), _loglikelihoods(local)
    assert len(served_ll) == len(ROWS)
    for (doc, got), (_, want) in zip(served_ll, local_ll):
        assert got == pytest.approx(want, abs=1e-4), f"doc {doc}"
    acc = served["results"]["lathe_serving_mc"]["acc,none"]
    assert acc == local["results"]["lathe_serving_mc"]["acc,none"]
