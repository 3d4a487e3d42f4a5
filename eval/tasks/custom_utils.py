"""Functions the custom suite YAMLs refer to (`!function custom_utils.<name>`); the logic lives in
eval/scoring.py and eval/judge.py."""

import functools
import json


@functools.lru_cache(maxsize=None)
def _spec(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def doc_to_target(doc: dict) -> str:
    return doc["target"]


def doc_to_choice(doc: dict) -> list[str]:
    return json.loads(doc["choices_json"])


def process_results(doc: dict, results: list[str]) -> dict:
    """{metric: score} for one generated answer."""
    spec = _spec(doc["_suite"])
    if spec["kind"] == "judge":
        from eval.judge import judge

        value, unparsed = judge(spec, doc, results[0])
        return {spec["metrics"][0]: value, "judge_unparsed": float(unparsed)}
    from eval.scoring import score

    value, _ = score(spec, doc, results[0])
    return {spec["metric"]: value}
