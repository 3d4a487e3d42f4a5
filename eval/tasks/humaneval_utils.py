"""Functions the HumanEval task YAML refers to (`!function humaneval_utils.<name>`).

Same semantics as lm-eval's stock HumanEval (prediction = prompt + completion, reference = tests +
`check(entry_point)`), but each program runs in eval.sandbox instead of `evaluate.load("code_eval")`,
which needs the hub.
"""

from eval.sandbox import run_program


def build_predictions(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Complete each generated body into a full program: the prompt (signature + docstring) + body."""
    return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs)]


def pass_at_1(references: list[str], predictions: list[list[str]], **_: object) -> float:
    """pass@1 of one greedy sample: 1.0 when the program and its tests run without error."""
    program = predictions[0][0] + "\n" + references[0]
    return 1.0 if run_program(program).passed else 0.0
