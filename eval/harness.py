"""Run the benchmark suites on a local Hugging Face model with lm-eval, offline, and record everything
that changes a score. `run_suites_endpoint` does the same against an OpenAI-compatible server
(lm-eval's `local-completions` client; eval/endpoint.py).

`run_suites` (and `run_suites_endpoint`) write into `out_dir`:
- `results.json`: the returned dict (layout in eval/README.md);
- `samples/<suite>.jsonl`: one row per scored item (prompt, target, response, metrics, correct);
- `lm_eval/<suite>.json`: lm-eval's own result (configs, versions, n-shot) without the samples;
- `logs/<suite>.traceback.txt`: only when lm-eval failed on a suite (recorded as not_run).

`flat_metrics` turns a results dict into `{"<suite>/<metric>": value}` for the promotion gate,
MLflow and DVC:
- `skills/exact_match`, `mmlu/acc`, `hellaswag/acc`, `hellaswag/acc_norm`,
  `gsm8k/exact_match_strict-match`, `gsm8k/exact_match_flexible-extract`, `humaneval/pass_at_1`,
  and each one's `…_stderr`;
- breakdowns as `<suite>.<part>/<metric>`: `mmlu.stem/acc` (category), `mmlu.anatomy/acc` (subject),
  `skills.<skill>/exact_match`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from recipes.errors import LatheError
from recipes.schema import SuiteConfig

from eval import records
from eval import suites as catalog
from eval.cache import EvalCache, atomic_write, settings_key, tree_sha256
from recipes.identity import file_sha256, model_hash

log = logging.getLogger("lathe.eval")


def run_suites(model_dir: str | Path, suites: list[SuiteConfig], *, mirror_dir: str | Path,
               skills_file: str | Path | None, out_dir: str | Path, batch_size: int = 8, seed: int = 1234,
               apply_chat_template: bool = False, label: str = "model", cache_dir: str | Path | None = None,
               device: str = "cpu", dtype: str = "float32", reference_dir: str | Path | None = None,
               opponents: dict | None = None) -> dict:
    """Evaluate `model_dir` on each suite; a suite whose data is missing is recorded as `not_run`.

    `apply_chat_template` applies to every suite but skills (always templated). `device`/`dtype` are
    lm-eval's hf backend arguments (`cuda`/`bfloat16` on a GPU). `reference_dir` is the base model the
    `retention` suite compares with (eval/retention.py); without it that suite is not run. `opponents`:
    per custom judge suite judged against the baseline, the baseline's answers `{line: text}` or "self"."""
    catalog.validate_suites(suites)  # the recipe's suites and the user's files first: cheap, and their errors are the user's
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise LatheError(f"eval: {model_dir} is not a Hugging Face model directory (no config.json); "
                         "evaluate the merged model directory the training stage writes.")
    if not any((model_dir / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        raise LatheError(f"eval: {model_dir} has no safetensors weights (model.safetensors or its index). Only "
                         "safetensors are loaded: pickled .bin weights can run code when loaded; convert them first.")
    model = _LocalModel(model_dir, batch_size=batch_size, device=device, dtype=dtype)
    return _run_all(model, suites, mirror_dir=mirror_dir, skills_file=skills_file, out_dir=out_dir, seed=seed,
                    apply_chat_template=apply_chat_template, label=label, cache_dir=cache_dir,
                    reference_dir=Path(reference_dir) if reference_dir else None, opponents=opponents)


def run_suites_endpoint(endpoint: str, suites: list[SuiteConfig], *, model_name: str, tokenizer: str | Path,
                        mirror_dir: str | Path, skills_file: str | Path | None, out_dir: str | Path,
                        seed: int = 1234, apply_chat_template: bool = False, label: str = "endpoint",
                        cache_dir: str | Path | None = None) -> dict:
    """`run_suites` against a model served by an OpenAI-compatible server (`endpoint` = its base URL,
    e.g. http://127.0.0.1:8000/v1) through lm-eval's `local-completions` client. `tokenizer` is a local
    directory with the served model's tokenizer and chat template (see eval/endpoint.py). The results
    record `backend: local-completions`, the endpoint and the served name in each suite's settings."""
    from eval.endpoint import connect

    catalog.validate_suites(suites)
    _offline()  # before connect(), which loads the local tokenizer
    model = connect(endpoint, model_name, tokenizer)
    return _run_all(model, suites, mirror_dir=mirror_dir, skills_file=skills_file, out_dir=out_dir, seed=seed,
                    apply_chat_template=apply_chat_template, label=label, cache_dir=cache_dir)


def _offline() -> None:
    # Nothing here needs the hub; without these an offline machine waits on network time-outs.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _run_all(model, suites, *, mirror_dir, skills_file, out_dir, seed, apply_chat_template, label, cache_dir,
             reference_dir: Path | None = None, opponents: dict | None = None) -> dict:
    _offline()
    out_dir, mirror_dir = Path(out_dir), Path(mirror_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(model=model, mirror_dir=mirror_dir, out_dir=out_dir,
               skills_file=Path(skills_file) if skills_file else None, seed=seed,
               apply_chat_template=apply_chat_template, cache=EvalCache(cache_dir) if cache_dir else None,
               reference_dir=reference_dir, opponents=opponents or {})
    results = {"label": label, **model.header(),
               "lm_eval_version": metadata.version("lm_eval"), "versions": _versions(),
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "suites": {}}
    with tempfile.TemporaryDirectory(prefix="lathe-eval-tasks-") as task_root:
        for suite in suites:
            log.info("eval %s: suite %s", label, suite.name)
            results["suites"][suite.name] = run.suite(suite, Path(task_root) / suite.name)
    atomic_write(out_dir / "results.json", json.dumps(results, indent=1, ensure_ascii=False, default=str))
    return results


def flat_metrics(results: dict) -> dict[str, float]:
    """`{"<suite>/<metric>": value, "<suite>.<part>/<metric>": value}` for suites that ran (see module doc)."""
    flat = {}
    for suite, entry in results.get("suites", {}).items():
        if entry.get("status") != "ok":
            continue
        for metric, value in entry["metrics"].items():
            if value is not None:
                flat[f"{suite}/{metric}"] = value
        for parts in entry.get("breakdown", {}).values():
            for part, values in parts.items():
                for metric, value in values.items():
                    if metric != "n" and value is not None:
                        flat[f"{suite}.{_safe(part)}/{metric}"] = value
    return flat


def _safe(part: str) -> str:
    return re.sub(r"[^\w.\- ]", "_", str(part))  # MLflow metric names: no '/' inside a part


def _versions() -> dict[str, str]:
    return {pkg: metadata.version(pkg) for pkg in ("lm_eval", "transformers", "torch", "datasets")}


class _LocalModel:
    """A local Hugging Face directory, loaded in-process by lm-eval's `hf` backend on first need."""

    def __init__(self, model_dir: Path, *, batch_size: int, device: str, dtype: str):
        self.model_dir, self.batch_size, self.device, self.dtype = model_dir, batch_size, device, dtype
        self.identity = model_hash(model_dir)
        self._lm = None

    @property
    def tokenizer_dir(self) -> Path:
        return self.model_dir

    def header(self) -> dict:
        return {"model_dir": str(self.model_dir.resolve()), "model_hash": self.identity, "backend": "hf"}

    def settings(self, chat_template: bool) -> dict:
        return {"backend": "hf", "batch_size": self.batch_size, "dtype": self.dtype, "device": self.device}

    def load(self, chat_template: bool):
        if self._lm is None:
            from lm_eval.api.registry import get_model

            log.info("eval: loading %s (%s, %s)", self.model_dir, self.dtype, self.device)
            # batch_size and device go in the second dict (lm-eval's CLI-level arguments), not model_args.
            self._lm = get_model("hf").create_from_arg_obj(
                {"pretrained": str(self.model_dir), "dtype": self.dtype},
                {"batch_size": self.batch_size, "device": self.device})
        return self._lm


@dataclass
class _Run:
    """Everything one run shares. `model` is a `_LocalModel` or an `eval.endpoint.EndpointModel`:
    `identity` (the cache's model hash), `header()`, `settings(chat_template)` and `load(chat_template)`;
    it is loaded on first need (never when every suite hits the cache)."""

    model: object
    mirror_dir: Path
    out_dir: Path
    skills_file: Path | None
    seed: int
    apply_chat_template: bool
    cache: EvalCache | None
    reference_dir: Path | None = None
    opponents: dict = field(default_factory=dict)

    def suite(self, suite: SuiteConfig, task_dir: Path) -> dict:
        if suite.name == "retention":
            return self._retention(suite)
        if suite.name == "tools":
            return self._tools(suite)
        try:
            prepared = catalog.prepare(suite, mirror_dir=self.mirror_dir, skills_file=self.skills_file,
                                      task_dir=task_dir, tokenizer_dir=self.model.tokenizer_dir, seed=self.seed,
                                      opponent=self.opponents.get(suite.name))
        except catalog.SuiteUnavailable as missing:
            log.warning("eval: %s not run: %s", suite.name, missing.reason)
            return {"status": "not_run", "reason": missing.reason, "fix": missing.fix}
        request = self._request(suite, prepared)
        key = settings_key(self.model.identity, _key_view(request))
        samples_path = self.out_dir / "samples" / f"{suite.name}.jsonl"
        if self.cache and (hit := self.cache.get(self.model.identity, suite.name, key, samples_path)):
            log.info("eval: %s reused from the cache", suite.name)
            return {**hit, "cache": "hit"}
        started = time.time()
        try:
            raw = self._evaluate(suite, prepared, request, task_dir)
        except Exception as exc:  # one broken suite must not cost the others (hours on a real model)
            log_path = self.out_dir / "logs" / f"{suite.name}.traceback.txt"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(traceback.format_exc())
            log.error("eval: %s failed: %s (traceback in %s)", suite.name, exc, log_path)
            return {"status": "not_run", "reason": f"{suite.name}: lm-eval failed: {type(exc).__name__}: {exc}",
                    "fix": f"read the traceback in {log_path} and fix its cause (a damaged data file, a model "
                           f"lm-eval cannot load), or remove {suite.name!r} from eval.suites."}
        entry = self._entry(suite, prepared, request, raw, samples_path, time.time() - started)
        if self.cache:
            self.cache.put(self.model.identity, suite.name, key, entry, samples_path)
        return entry

    def _retention(self, suite: SuiteConfig) -> dict:
        """Not lm-eval: KL(base ‖ model) on the base's answers to held-out prompts (eval/retention.py)."""
        from eval import retention

        if self.reference_dir is None or not isinstance(self.model, _LocalModel):
            return {"status": "not_run", "reason": "retention: needs the base model beside a local model directory "
                    "(not available for a served endpoint)", "fix": "run it in the evaluate stage (`lathe evaluate`)."}
        prompts = retention.PROMPTS_FILE
        request = {"suite": "retention", "task": "retention", "num_fewshot": 0, "limit": suite.limit,
                   "max_gen_toks": suite.max_gen_toks or retention.MAX_NEW_TOKENS, "seed": self.seed,
                   "apply_chat_template": True, "reference_hash": model_hash(self.reference_dir),
                   "data_source": f"prompts {prompts}", **self.model.settings(True),
                   "data_files": {"prompts": {"path": str(prompts), "sha256": file_sha256(prompts)}},
                   "task_config_sha256": file_sha256(Path(retention.__file__)), "versions": _versions()}
        key = settings_key(self.model.identity, _key_view(request))
        samples_path = self.out_dir / "samples" / "retention.jsonl"
        if self.cache and (hit := self.cache.get(self.model.identity, "retention", key, samples_path)):
            return {**hit, "cache": "hit"}
        cache_root = self.cache.root if self.cache else self.out_dir
        entry = retention.evaluate(self.reference_dir, self.model.model_dir, limit=suite.limit,
                                   max_new_tokens=request["max_gen_toks"], cache_dir=cache_root / "base-answers",
                                   samples_path=samples_path, device=self.model.device, dtype=self.model.dtype,
                                   is_base=request["reference_hash"] == self.model.identity)  # hashed once, above
        entry.update(settings={**request, "n_samples": {"scored": entry["n"], "available": entry["n"]}},
                     samples_file=str(samples_path.relative_to(self.out_dir)), cache="miss")
        if self.cache:
            self.cache.put(self.model.identity, "retention", key, entry, samples_path)
        return entry

    def _tools(self, suite: SuiteConfig) -> dict:
        """Not lm-eval: BFCL function calls asked as `lathe serve` asks, scored by BFCL's rule (eval/tools.py)."""
        from eval import tools

        if not isinstance(self.model, _LocalModel):
            return {"status": "not_run", "reason": "tools: judged in process on a local model directory for now",
                    "fix": "run it in the evaluate stage; against a server, `python -m bench.tools` asks it with the openai client."}
        subsets = suite.subjects or ["simple_python", "multiple"]
        data = {f"{s}{kind}": p for s in subsets for kind, p in zip(("", "_answers"), tools.files(self.mirror_dir, s))}
        if missing := [str(p) for p in data.values() if not p.exists()]:
            return {"status": "not_run", "reason": f"tools: BFCL files missing: {', '.join(missing)}",
                    "fix": "put BFCL v4 files under <eval.mirror_dir>/bfcl (see eval/README.md)."}
        request = {"suite": "tools", "task": "tools", "num_fewshot": 0, "limit": suite.limit, "subjects": subsets,
                   "max_gen_toks": suite.max_gen_toks or 128, "seed": self.seed, "apply_chat_template": True,
                   "data_source": f"BFCL v4 in {self.mirror_dir / 'bfcl'}", **self.model.settings(True),
                   "data_files": {k: {"path": str(p), "sha256": file_sha256(p)} for k, p in data.items()},
                   "task_config_sha256": tree_sha256([Path(tools.__file__)] + sorted(Path(chat_dir()).glob("*.py"))),
                   "versions": _versions()}
        key = settings_key(self.model.identity, _key_view(request))
        samples_path = self.out_dir / "samples" / "tools.jsonl"
        if self.cache and (hit := self.cache.get(self.model.identity, "tools", key, samples_path)):
            return {**hit, "cache": "hit"}
        entry = tools.evaluate(self.model.model_dir, self.mirror_dir, subsets, limit=suite.limit,
                               samples_path=samples_path, max_new_tokens=request["max_gen_toks"],
                               device=self.model.device, dtype=self.model.dtype)
        entry.update(settings={**request, "n_samples": {"scored": entry["n"], "available": entry["n"]}},
                     samples_file=str(samples_path.relative_to(self.out_dir)), cache="miss")
        if self.cache:
            self.cache.put(self.model.identity, "tools", key, entry, samples_path)
        return entry

    def _token_counter(self):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(self.model.tokenizer_dir))
        return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)

    def _request(self, suite: SuiteConfig, prepared: catalog.PreparedSuite) -> dict:
        """Every input that changes the suite's scores: the settings recorded and the cache key."""
        task_files = sorted(p for p in catalog.TASKS_DIR.iterdir() if p.suffix in (".yaml", ".py"))
        chat_template = prepared.rendered or catalog.FIXED_CHAT_TEMPLATE.get(suite.name, self.apply_chat_template)
        if prepared.rendered:  # how custom suites render and score changes their scores
            from eval import custom, judge, scoring

            task_files += [Path(custom.__file__), Path(scoring.__file__), Path(judge.__file__),
                           *sorted(chat_dir().glob("*.py")), *sorted(judge.PROMPTS_DIR.glob("judge_*.txt"))]
        return {
            "suite": suite.name, "task": prepared.task, "num_fewshot": prepared.num_fewshot,
            "limit": suite.limit, "subjects": suite.subjects, "max_gen_toks": suite.max_gen_toks,
            "seed": self.seed, "apply_chat_template": chat_template, "fewshot_as_multiturn": True,
            **self.model.settings(chat_template),
            "data_source": prepared.data_source,
            "data_files": {k: {"path": str(p), "sha256": file_sha256(p)} for k, p in prepared.data_files.items()},
            "task_config_sha256": tree_sha256(task_files + [catalog.stock_task_yaml(f"{n}/{n}.yaml")
                                                            for n in ("gsm8k", "hellaswag")]),
            "versions": _versions(),
            **({"custom": {k: v for k, v in prepared.spec.items() if k not in ("file", "verdicts_file")}}
               if prepared.spec else {}),
        }

    def _evaluate(self, suite: SuiteConfig, prepared: catalog.PreparedSuite, request: dict, task_dir: Path) -> dict:
        import lm_eval
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=str(task_dir), include_defaults=False)
        return lm_eval.simple_evaluate(  # rendered prompts are templated already: load for them, don't template twice
            model=self.model.load(request["apply_chat_template"]), tasks=[prepared.task], task_manager=manager,
            num_fewshot=prepared.num_fewshot, limit=suite.limit, batch_size=request["batch_size"],
            device=request.get("device"), log_samples=True,
            apply_chat_template=request["apply_chat_template"] and not prepared.rendered,
            fewshot_as_multiturn=request["fewshot_as_multiturn"],
            gen_kwargs={"max_gen_toks": suite.max_gen_toks} if suite.max_gen_toks else None,
            random_seed=self.seed, numpy_random_seed=self.seed, torch_random_seed=self.seed,
            fewshot_random_seed=self.seed, confirm_run_unsafe_code=prepared.unsafe_code)

    def _entry(self, suite, prepared, request, raw, samples_path, duration) -> dict:
        rows = records.normalize_samples(prepared, raw)
        if prepared.spec.get("kind") == "judge":
            records.attach_verdicts(rows, Path(prepared.spec["verdicts_file"]))
        records.write_samples(rows, samples_path)
        entry = {"status": "ok", **records.suite_entry(prepared, raw)}
        if prepared.part_kind:
            entry["breakdown"] = records.breakdown_by_part(rows, entry["primary"], prepared.part_kind)
        configs = raw["configs"]
        shots = sorted({int(n) for n in raw["n-shot"].values()})
        entry["settings"] = {
            **request,
            "num_fewshot": shots[0] if len(shots) == 1 else shots,  # effective (lm-eval keeps a YAML's 0)
            "num_fewshot_requested": prepared.num_fewshot,
            "gen_kwargs": next((c.get("generation_kwargs") for c in configs.values()), None),
            "filters": sorted({f["name"] for c in configs.values() for f in (c.get("filter_list") or [])}),
            "n_samples": {"scored": sum(v["effective"] for v in raw["n-samples"].values()),
                          "available": sum(v["original"] for v in raw["n-samples"].values())},
            "max_length": raw.get("max_length"),
        }
        max_tokens = (entry["settings"]["gen_kwargs"] or {}).get("max_gen_toks")
        if rows and "response" in rows[0] and "choices" not in rows[0]:  # generation suites: why answers fail
            entry["generation"] = records.generation_failures(rows, max_tokens, self._token_counter())
        entry.update(examples=records.examples(rows), samples_file=str(samples_path.relative_to(self.out_dir)),
                     duration_s=round(duration, 1), cache="miss")
        raw_path = self.out_dir / "lm_eval" / f"{suite.name}.json"
        raw_path.parent.mkdir(parents=True, exist_ok=True)
        raw_path.write_text(json.dumps({k: v for k, v in raw.items() if k != "samples"}, indent=1, default=str))
        return entry


def chat_dir() -> Path:
    """The chat format's code: how the tools suite asks changes its scores."""
    import chat

    return Path(chat.__file__).parent


def _key_view(request: dict) -> dict:
    """The request without file locations: a moved mirror or skills file with the same content hits."""
    view = {k: v for k, v in request.items() if k not in ("data_source", "tokenizer_dir")}
    view["data_files"] = {k: f["sha256"] for k, f in request["data_files"].items()}
    return view
