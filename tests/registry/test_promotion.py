"""promote / rollback on a real MLflow sqlite store, including two processes racing."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from recipes import LatheError
from recipes.schema import GateConfig
from registry import models, promotion, tracking

NAME = "lathe-test"
P = "skills/exact_match"
POLICY = GateConfig(primary_metric=P, required=[P], min_improvement=0.0, max_regression=0.05, require_power=False)
BASE = {"base": {"metrics": {P: 0.0}, "paired": None}}  # the base model's results: champion zero


def reg(factory, seed: int, score: float, **extra) -> str:
    return models.register(NAME, factory(seed), metrics={P: score, **extra}, tags={}).version


def champion() -> str | None:
    info = models.get_version(NAME, "champion")
    return info.version if info else None


def test_first_then_better_candidate_moves_champion_with_tags_and_json(store_uri, tmp_path, model_dir_factory):
    v1 = reg(model_dir_factory, 1, 0.5)
    d1 = promotion.promote(NAME, "candidate", POLICY, judged=BASE, out_json=tmp_path / "d1.json")
    assert d1.promote and champion() == v1
    first = models.get_version(NAME, v1)
    assert first.tags[promotion.PREVIOUS] == "" and first.tags[promotion.PROMOTED_AT]
    v2 = reg(model_dir_factory, 2, 0.7)
    d2 = promotion.promote(NAME, v2, POLICY, judged=BASE, out_json=tmp_path / "d2.json")
    assert d2.promote and champion() == v2
    second = models.get_version(NAME, v2)
    assert second.tags[promotion.PREVIOUS] == v1
    written = json.loads((tmp_path / "d2.json").read_text())
    assert written == json.loads(second.tags[promotion.DECISION])
    assert written["champion_before"] == v1 and written["champion_after"] == v2 and written["promote"] is True
    assert written["policy"]["primary_metric"] == P


@pytest.mark.parametrize("score,extra,why", [
    (0.5, {}, "ties"),
    (0.4, {}, "does not beat"),
    (0.9, {"mmlu/acc": 0.2}, "dropped more than max_regression 0.05"),
])
def test_refused_candidate_leaves_champion_untouched(store_uri, tmp_path, model_dir_factory, score, extra, why):
    v1 = reg(model_dir_factory, 1, 0.5, **{"mmlu/acc": 0.4})
    promotion.promote(NAME, v1, POLICY, judged=BASE)
    v2 = reg(model_dir_factory, 2, score, **extra)
    decision = promotion.promote(NAME, v2, POLICY, judged=BASE, out_json=tmp_path / "d.json")
    assert not decision.promote and any(why in r for r in decision.reasons), decision.reasons
    assert champion() == v1
    refused = models.get_version(NAME, v2)
    assert promotion.PROMOTED_AT not in refused.tags
    assert json.loads(refused.tags[promotion.LAST_DECISION])["champion_after"] == v1
    assert json.loads((tmp_path / "d.json").read_text())["promote"] is False


def test_missing_required_metric_blocks_the_first_promotion(store_uri, model_dir_factory):
    version = models.register(NAME, model_dir_factory(1), metrics={"other": 1.0}, tags={}).version
    decision = promotion.promote(NAME, version, POLICY, judged=BASE)
    assert not decision.promote and champion() is None


def test_force_needs_a_reason_and_is_recorded(store_uri, model_dir_factory):
    v1 = reg(model_dir_factory, 1, 0.5)
    promotion.promote(NAME, v1, POLICY, judged=BASE)
    v2 = reg(model_dir_factory, 2, 0.3)
    with pytest.raises(LatheError, match="needs a reason"):
        promotion.promote(NAME, v2, POLICY, judged=BASE, force=True)
    assert champion() == v1
    decision = promotion.promote(NAME, v2, POLICY, judged=BASE, force=True, reason="hotfix for safety issue")
    assert decision.promote and decision.forced and champion() == v2
    tags = models.get_version(NAME, v2).tags
    assert tags[promotion.FORCE_REASON] == "hotfix for safety issue" and tags[promotion.FORCED_BY]


def test_promoting_the_champion_again_is_a_noop(store_uri, model_dir_factory):
    v1 = reg(model_dir_factory, 1, 0.5)
    promotion.promote(NAME, v1, POLICY, judged=BASE)
    decision = promotion.promote(NAME, v1, POLICY, judged=BASE)
    assert not decision.promote and "already the champion" in decision.reasons[0] and champion() == v1


def test_unknown_candidate_is_a_clear_error(store_uri, model_dir_factory):
    reg(model_dir_factory, 1, 0.5)
    with pytest.raises(LatheError, match="no version 9"):
        promotion.promote(NAME, "9", POLICY, judged=BASE)


def test_rollback_walks_the_champion_history(store_uri, model_dir_factory):
    v1 = reg(model_dir_factory, 1, 0.5)
    with pytest.raises(LatheError, match="no alias 'champion'"):
        promotion.rollback(NAME)
    promotion.promote(NAME, v1, POLICY, judged=BASE)
    v2 = reg(model_dir_factory, 2, 0.6)
    promotion.promote(NAME, v2, POLICY, judged=BASE)
    v3 = reg(model_dir_factory, 3, 0.7)
    promotion.promote(NAME, v3, POLICY, judged=BASE)
    assert promotion.rollback(NAME) == v2 and champion() == v2
    assert promotion.ROLLED_BACK_AT in models.get_version(NAME, v3).tags
    assert promotion.rollback(NAME) == v1 and champion() == v1
    with pytest.raises(LatheError, match="first champion"):
        promotion.rollback(NAME)
    assert champion() == v1


def test_decision_is_logged_to_the_active_run(store_uri, model_dir_factory):
    import mlflow

    v1 = reg(model_dir_factory, 1, 0.5)
    with tracking.pipeline_run("exp", "promote", {}) as run:
        promotion.promote(NAME, v1, POLICY, judged=BASE)
    logged = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/promotion/{NAME}-v{v1}.json")
    assert logged["promote"] is True and logged["candidate"] == v1


def _promote_in_process(uri: str, root: str, version: str, barrier) -> bool:
    from registry import promotion, tracking

    tracking.configure(uri, Path(root))
    barrier.wait()  # both processes read-decide-write at the same moment
    return promotion.promote(NAME, version, POLICY, judged=BASE).promote


def test_racing_promotions_leave_a_consistent_champion_and_history(store_uri, tmp_path, model_dir_factory):
    v1 = reg(model_dir_factory, 1, 0.5)
    promotion.promote(NAME, v1, POLICY, judged=BASE)
    v2 = reg(model_dir_factory, 2, 0.6)
    v3 = reg(model_dir_factory, 3, 0.7)
    ctx = multiprocessing.get_context("spawn")  # fork would share MLflow's open sqlite connections
    with ctx.Manager() as manager:
        barrier = manager.Barrier(2)
        with ctx.Pool(2) as pool:
            results = [pool.apply_async(_promote_in_process, (store_uri, str(tmp_path), v, barrier)) for v in (v2, v3)]
            outcomes = [r.get(timeout=120) for r in results]
    # Serialised, the best candidate wins whichever order they ran in; v2 wins only if it ran first.
    assert champion() == v3 and outcomes[1] is True
    # History: following lathe.previous_champion from the champion visits every promoted version once.
    chain, seen = [], champion()
    while seen:
        chain.append(seen)
        seen = models.get_version(NAME, seen).tags[promotion.PREVIOUS]
    promoted = {v for v in (v1, v2, v3) if promotion.PROMOTED_AT in models.get_version(NAME, v).tags}
    assert sorted(chain) == sorted(promoted) and len(chain) == len(set(chain))
    assert chain[-1] == v1 and (v2 in chain) == outcomes[0]


def test_a_first_version_is_judged_against_its_base_model(store_uri, model_dir_factory):
    v1 = reg(model_dir_factory, 1, 0.5)
    alone = promotion.promote(NAME, v1, POLICY)  # no champion, no base results: nothing to compare with
    assert not alone.promote and champion() is None and "nothing to compare with" in alone.reasons[0]
    worse = promotion.promote(NAME, v1, POLICY, judged={"base": {"metrics": {P: 0.6}, "paired": None}})
    assert not worse.promote and worse.compared_with == "base" and "does not beat base 0.6" in worse.reasons[0]
    better = promotion.promote(NAME, v1, POLICY, judged=BASE)
    assert better.promote and champion() == v1
    assert models.get_version(NAME, v1).tags[promotion.COMPARED_WITH] == "base"
