"""register / get_version / resolve against a real MLflow sqlite store."""

from __future__ import annotations

import pytest

from recipes import LatheError
from recipes.identity import model_hash
from registry import models, tracking

NAME = "lathe-test"
# 0.30000000000000004 must survive the round trip; '@' and ',' are refused in MLflow tag keys
METRICS = {"skills/exact_match": 0.625, "mmlu/acc": 0.1 + 0.2, "humaneval/pass@1": 0.125, "mmlu/acc,none": 0.5,
           "mmlu.anatomy/acc": 0.25, "mmlu/acc_stderr": 0.05}


def test_register_sets_candidate_and_stores_metrics_card_and_files(store_uri, tmp_path, model_dir_factory):
    src = model_dir_factory(1)
    info = models.register(NAME, src, metrics=METRICS, tags={"lathe.recipe": "default"}, card_text="# card\nhello")
    assert info.version == "1" and info.aliases == ["candidate"]
    assert info.metrics == METRICS
    assert info.tags == {"lathe.recipe": "default", models.CONTENT_TAG: info.tags[models.CONTENT_TAG],
                         models.REGISTRATION_TAG: info.tags[models.REGISTRATION_TAG]}
    import mlflow

    raw = mlflow.MlflowClient().get_model_version(NAME, "1").tags  # what the MLflow UI shows
    assert raw["metric.humaneval/pass_1"] == "0.125" and raw["metric.mmlu/acc"] == "0.30000000000000004"
    assert not [k for k in raw if k.startswith("metric.") and ("_stderr" in k or "." in k[len("metric."):].split("/")[0])]
    assert info.tags["lathe.recipe"] == "default"
    assert info.tags[models.CONTENT_TAG] == model_hash(src)
    assert info.description == "# card\nhello"
    stored = info.model_dir
    assert stored.is_relative_to(tmp_path / "mlartifacts"), stored  # the store's artifact folder, not ./mlruns
    assert (stored / "config.json").read_bytes() == (src / "config.json").read_bytes()
    assert (stored / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert (stored / "MODEL_CARD.md").read_text() == "# card\nhello"
    assert models.get_version(NAME, "candidate").version == "1"


def test_reregistering_identical_inputs_returns_the_existing_version(store_uri, model_dir_factory):
    first = models.register(NAME, model_dir_factory(1), metrics=METRICS, tags={})
    other = models.register(NAME, model_dir_factory(2), metrics=METRICS, tags={})
    assert other.version == "2" and models.get_version(NAME, "candidate").version == "2"
    again = models.register(NAME, model_dir_factory(1), metrics=dict(METRICS), tags={})
    assert again.version == first.version == "1"
    assert models.get_version(NAME, "candidate").version == "1"  # candidate follows the latest registration
    assert models.get_version(NAME, "3") is None  # no duplicate was created
    changed = models.register(NAME, model_dir_factory(1), metrics={**METRICS, "mmlu/acc": 0.4}, tags={})
    assert changed.version == "3"  # same files, new metrics: a new version


def test_register_uses_the_given_or_active_run(store_uri, model_dir_factory):
    import mlflow

    with tracking.pipeline_run("exp", "p", {}) as run:
        info = models.register(NAME, model_dir_factory(1), metrics=METRICS, tags={})
    assert info.run_id == run.info.run_id
    assert info.source.startswith(run.info.artifact_uri)
    explicit = mlflow.MlflowClient().create_run(run.info.experiment_id).info.run_id
    assert models.register(NAME, model_dir_factory(2), metrics=METRICS, tags={}, run_id=explicit).run_id == explicit


@pytest.mark.parametrize("bad,message", [
    ({"metrics": {"a": "high"}}, "metric 'a' = 'high' is not a number"),
    ({"model_dir": "missing"}, "missing is not a directory with model files"),
    ({"name": "a/b"}, "registered model name 'a/b'"),
])
def test_register_rejects_bad_input_clearly(store_uri, tmp_path, model_dir_factory, bad, message):
    kwargs = {"name": NAME, "model_dir": model_dir_factory(1), "metrics": METRICS, "tags": {}, **bad}
    if "model_dir" in bad:
        kwargs["model_dir"] = tmp_path / bad["model_dir"]
    with pytest.raises(LatheError, match=message):
        models.register(kwargs.pop("name"), kwargs.pop("model_dir"), **kwargs)


def test_resolve_alias_version_uri_and_path(store_uri, tmp_path, model_dir_factory):
    v1 = models.register(NAME, model_dir_factory(1), metrics=METRICS, tags={})
    v2 = models.register(NAME, model_dir_factory(2), metrics=METRICS, tags={})
    models.set_alias(NAME, "champion", v1.version, tags={"why": "test"})
    assert models.resolve("champion", NAME) == v1.model_dir
    assert models.resolve("candidate", NAME) == v2.model_dir
    assert models.resolve(f"models:/{NAME}@champion") == v1.model_dir
    assert models.resolve(f"models:/{NAME}/2") == v2.model_dir
    assert models.get_version(NAME, "1").tags["why"] == "test"
    local = tmp_path / "models" / "m1"
    assert models.resolve(str(local)) == local.resolve()
    assert (models.resolve("champion", NAME) / "config.json").exists()


def test_resolve_unknown_alias_version_model_and_ref_name_the_fix(store_uri, model_dir_factory):
    models.register(NAME, model_dir_factory(1), metrics=METRICS, tags={})
    with pytest.raises(LatheError, match=r"no alias 'champion' \(aliases: candidate→v1\): promote a candidate"):
        models.resolve("champion", NAME)
    with pytest.raises(LatheError, match=r"no version 7 .*use one of the aliases or versions"):
        models.resolve(f"models:/{NAME}/7")
    with pytest.raises(LatheError, match=r"no registered model 'nope' .*registered: lathe-test"):
        models.resolve("models:/nope@champion")
    with pytest.raises(LatheError, match="no model name was given"):
        models.resolve("champion")
    with pytest.raises(LatheError, match="not a directory, and not a registry reference"):
        models.resolve("./no/such/dir")


def test_resolve_with_no_store_says_so_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///empty/mlflow.db")  # relative: under tmp_path
    tracking.configure("sqlite:///ignored.db", tmp_path)
    with pytest.raises(LatheError, match="no MLflow store at .*empty/mlflow.db.*register stage"):
        models.resolve("champion", NAME)
    assert not (tmp_path / "empty" / "mlflow.db").exists()


def test_resolve_reports_deleted_files(store_uri, model_dir_factory):
    import shutil

    info = models.register(NAME, model_dir_factory(1), metrics=METRICS, tags={})
    shutil.rmtree(info.model_dir)
    with pytest.raises(LatheError, match="files are gone"):
        models.resolve("candidate", NAME)


def test_unreachable_remote_store_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    tracking.configure(None, tmp_path)
    with pytest.raises(LatheError, match=r"cannot read lathe-test@champion from the MLflow store http://127.0.0.1:9"):
        models.resolve("champion", NAME)
