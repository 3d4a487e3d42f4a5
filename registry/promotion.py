"""Move alias `champion` when the gate says so; roll it back.

Read-decide-write runs under the store lock (registry.store.store_lock), so two racing promotions
are serialised: the second one is judged against the champion the first one just set. Tags are
written on the candidate BEFORE the alias moves, so the champion always carries the tags that say
how it got there. Remote stores (http://…) get no lock: run one promoter at a time there.

Tags on a promoted version: lathe.promoted_at (UTC ISO time), lathe.previous_champion (version or
""), lathe.decision (the decision JSON), and with force: lathe.forced_by, lathe.force_reason.
Every judged candidate also gets lathe.last_decision and lathe.compared_with (`base` or
`champion version N`). `lathe.previous_champion` links form the
champion history that rollback() walks back along.
"""

from __future__ import annotations

import getpass
import json
from datetime import datetime, timezone
from pathlib import Path

from recipes.errors import LatheError
from recipes.schema import GateConfig
from registry import gate, models, store

PROMOTED_AT = "lathe.promoted_at"
PREVIOUS = "lathe.previous_champion"
DECISION = "lathe.decision"
LAST_DECISION = "lathe.last_decision"
FORCED_BY = "lathe.forced_by"
FORCE_REASON = "lathe.force_reason"
ROLLED_BACK_AT = "lathe.rolled_back_at"
COMPARED_WITH = "lathe.compared_with"


def _baseline(champion, judged: dict, champion_metrics: dict) -> tuple[dict | None, dict | None, str]:
    """(metrics, paired comparisons, name) of what the candidate is judged against: the champion, or the
    base model ("champion zero") when there is no champion yet."""
    if champion is None:
        base = judged.get("base")
        return (base["metrics"], base.get("paired"), "base") if base else (None, None, "base")
    against = f"champion version {champion.version}"
    rejudged = judged.get("champion")
    if rejudged and str(rejudged.get("version")) == str(champion.version):
        return rejudged["metrics"], rejudged.get("paired"), against
    return champion_metrics.get(str(champion.version), champion.metrics), None, against


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def promote(name: str, candidate_version: str, policy: GateConfig | dict, *, force: bool = False,
            reason: str | None = None, out_json: Path | None = None,
            champion_metrics: dict[str, dict[str, float]] | None = None,
            judged: dict | None = None) -> gate.Decision:
    """Judge `candidate_version` (a number or an alias such as `candidate`) against the champion — or,
    with no champion yet, against the base model it was trained from — and move `champion` to it if
    the gate passes, or if `force` (which needs a `reason`).

    `judged` is the evaluate stage's record for THIS candidate (comparisons.json's `against`):
    `{"base": {metrics, paired}, "champion": {version, metrics, paired}}`, the models judged in the same
    run on the same items; the gate then compares item by item. `champion_metrics` maps a version to
    metrics measured in the same run (unpaired fallback); otherwise the champion's stored metrics."""
    if isinstance(policy, dict):
        policy = GateConfig.model_validate(policy)
    if force and not (reason and reason.strip()):
        raise LatheError("a forced promotion needs a reason (it is recorded on the version as lathe.force_reason)")
    client = store.client()
    with store.store_lock():
        candidate = models.get_version(name, candidate_version)
        if candidate is None:
            raise LatheError(models.not_found_message(name, str(candidate_version)))
        champion = models.get_version(name, models.CHAMPION)
        if champion is not None and champion.version == candidate.version:
            decision = gate.Decision(False, [f"version {candidate.version} is already the champion; nothing to do"], [])
        else:
            baseline, paired, against = _baseline(champion, judged or {}, champion_metrics or {})
            decision = gate.decide(candidate.metrics, baseline, policy, paired=paired, against=against)
            if force and not decision.promote:
                decision.promote, decision.forced = True, True
                decision.reasons.append(f"forced by {getpass.getuser()}: {reason}")
        record = {"name": name, "candidate": candidate.version,
                  "champion_before": champion.version if champion else None,
                  "champion_after": candidate.version if decision.promote else (champion.version if champion else None),
                  "decided_at": _now(), "policy": policy.model_dump(mode="json"), **decision.to_dict()}
        text = json.dumps(record, indent=2, sort_keys=True)
        client.set_model_version_tag(name, candidate.version, LAST_DECISION, text)
        if decision.compared_with:
            client.set_model_version_tag(name, candidate.version, COMPARED_WITH, decision.compared_with)
        if decision.promote:
            tags = {PROMOTED_AT: record["decided_at"], PREVIOUS: champion.version if champion else "", DECISION: text}
            if decision.forced:
                tags |= {FORCED_BY: getpass.getuser(), FORCE_REASON: reason}
            models.set_alias(name, models.CHAMPION, candidate.version, tags)
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(text + "\n")
    _log_to_active_run(record, f"promotion/{name}-v{candidate.version}.json")
    return decision


def rollback(name: str) -> str:
    """Point `champion` back at the version it replaced; returns that version."""
    client = store.client()
    with store.store_lock():
        champion = models.get_version(name, models.CHAMPION)
        if champion is None:
            raise LatheError(models.not_found_message(name, models.CHAMPION))
        previous = champion.tags.get(PREVIOUS, "")
        if not previous:
            raise LatheError(f"{name} version {champion.version} was the first champion: there is nothing to roll back to")
        if models.get_version(name, previous) is None:
            raise LatheError(f"{name}: previous champion version {previous} no longer exists (deleted?); "
                             "promote a version explicitly instead")
        client.set_model_version_tag(name, champion.version, ROLLED_BACK_AT, _now())
        models.set_alias(name, models.CHAMPION, previous)
    record = {"name": name, "rolled_back_from": champion.version, "champion_after": previous, "at": _now()}
    _log_to_active_run(record, f"promotion/{name}-rollback-from-v{champion.version}.json")
    return previous


def _log_to_active_run(record: dict, artifact_file: str) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_dict(record, artifact_file)
