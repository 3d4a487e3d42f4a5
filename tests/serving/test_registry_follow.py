"""Serving the champion: when the alias moves, the server loads the new version and swaps it in
without dropping the request in flight (a real MLflow sqlite store, two different tiny models)."""

from __future__ import annotations

import logging
import time

import openai
import pytest

from tests.serving.conftest import running_server
from tests.tiny_model import build_tiny_model


@pytest.fixture
def registry_store(tmp_path, monkeypatch):
    from registry import store

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    store.reset()
    store.configure(None, tmp_path)
    yield
    store.reset()


PROMPT = "the cat sat on the mat"


def _scores(client) -> list[float]:
    """The served model's log-probabilities of PROMPT's tokens: a fingerprint of its weights."""
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=0, echo=True, logprobs=0)
    return out.choices[0].logprobs.token_logprobs[1:]


def test_the_server_follows_the_champion_without_dropping_requests(registry_store, tiny_model_dir, tmp_path,
                                                                   caplog):
    from registry import models

    caplog.set_level(logging.INFO, logger="lathe.serving")
    first = models.register("tiny", tiny_model_dir, metrics={"score": 0.1}, tags={})
    models.set_alias("tiny", "champion", first.version)
    second_dir = build_tiny_model(tmp_path / "second", seed=1)  # other weights, other answers
    first_dir = models.resolve("champion", "tiny")
    adapter = _adapter_trained_on(first_dir, tmp_path / "adapter")

    with running_server(model_dir=first_dir, model_name="tiny", model_ref="champion", registry_model_name="tiny",
                        watch_interval_s=0.2, adapters={"tiny-ft": adapter}) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        assert client.models.retrieve("tiny").model_extra["version"] == first.version
        assert [m.id for m in client.models.list().data] == ["tiny", "tiny-ft"]
        before = _scores(client)

        # a long request in flight on version 1 while the alias moves
        stream = iter(client.completions.create(
            model="tiny", prompt="the", max_tokens=400, n=4, temperature=1.0, stream=True,
            stream_options={"include_usage": True}, extra_body={"min_tokens": 400}))
        next(stream)
        second = models.register("tiny", second_dir, metrics={"score": 0.2}, tags={})
        models.set_alias("tiny", "champion", second.version)

        deadline = time.monotonic() + 60
        while client.models.retrieve("tiny").model_extra["version"] != second.version:
            assert time.monotonic() < deadline, "the server never switched to the new champion"
            time.sleep(0.1)
        card = client.models.retrieve("tiny")
        assert card.model_extra["root"] == str(models.resolve(f"models:/tiny/{second.version}"))
        after = _scores(client)
        # The adapter was trained on version 1: on version 2 it would answer as a model nobody trained.
        assert [m.id for m in client.models.list().data] == ["tiny"]
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="tiny-ft", prompt="the", max_tokens=1)

        rest = list(stream)  # the old request was not dropped: it ran to its end on version 1
        assert rest[-1].usage.completion_tokens == 4 * 400
        assert sorted(c.choices[0].index for c in rest if c.choices and c.choices[0].finish_reason) == [0, 1, 2, 3]

    swaps = [r.getMessage() for r in caplog.records if "still on the previous model" in r.getMessage()]
    assert swaps and "1 request(s)" in swaps[0]  # the swap happened while the stream was running
    assert before == pytest.approx(_reference_scores(tiny_model_dir), abs=1e-4)
    assert after == pytest.approx(_reference_scores(second_dir), abs=1e-4)


def _adapter_trained_on(model_dir, out):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)  # PEFT records model_dir as the adapter's base
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(out)
    return out


def test_adapters_fit_only_the_local_base_they_were_trained_on(tmp_path):
    import json

    from serving.engine import adapters_for_base

    bases = {name: tmp_path / name for name in ("v1", "v2")}
    for path in bases.values():
        path.mkdir()
    adapters = {}
    for name, recorded in (("on-v1", str(bases["v1"])), ("on-v2", str(bases["v2"])), ("hub", "org/model"),
                           ("no-config", None), ("deleted-base", str(tmp_path / "gone"))):
        adapters[name] = tmp_path / f"adapter-{name}"
        adapters[name].mkdir()
        if recorded:
            (adapters[name] / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": recorded}))
    assert set(adapters_for_base(adapters, bases["v2"])) == {"on-v2", "hub", "no-config"}  # unknowable: kept
    assert set(adapters_for_base(adapters, bases["v1"])) == {"on-v1", "hub", "no-config"}


def _reference_scores(model_dir) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tokenizer.encode(PROMPT)
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return [logprobs[i - 1, ids[i]].item() for i in range(1, len(ids))]


def test_a_fixed_version_or_folder_is_not_watched(tmp_path):
    from serving.settings import ServerSettings
    from serving.watcher import AliasWatcher

    def watcher(**kwargs):
        return AliasWatcher.for_settings(ServerSettings(model_dir=tmp_path, **kwargs))

    assert watcher(model_ref="models:/tiny/3") is None
    assert watcher(model_ref=str(tmp_path)) is None
    assert watcher(model_ref="champion", registry_model_name="tiny", watch_interval_s=0) is None
    follows = watcher(model_ref="models:/tiny@staging")
    assert (follows.name, follows.alias) == ("tiny", "staging")
    assert watcher(model_ref="champion", registry_model_name="tiny").alias == "champion"
