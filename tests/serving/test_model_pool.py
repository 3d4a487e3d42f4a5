"""The pool of whole models served beside the live one (serving/model_pool.py), with real engines on the tiny
model: a model loads on its first call, once for concurrent calls; the least recently called one is unloaded only
after its last request, before the next load (never two whole models at once with max_full_models=1); a failed load
is remembered; a gone directory, a removed name and a server that keeps no whole model answer 404."""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import pytest

from serving.errors import APIError
from serving.settings import ServerSettings
from serving.state import ServedModel, ServerState


def _state(model_dir, **settings) -> ServerState:
    return ServerState(ServerSettings(model_dir=model_dir, **settings), ServedModel(engine=None, model_dir=model_dir))


def test_a_model_loads_once_and_is_unloaded_only_after_its_last_request(tiny_model_dir, tmp_path):
    b_dir = shutil.copytree(tiny_model_dir, tmp_path / "b")

    async def scenario() -> None:
        state = _state(tiny_model_dir, max_full_models=1)
        state.models.add("a", tiny_model_dir)
        state.models.add("b", b_dir)
        calls = await asyncio.gather(*(state.target("a") for _ in range(3)))
        a = calls[0][0]
        assert all(served is a for served, _ in calls) and a.engine.ready  # one load, shared
        admission = state.admit(state.ready_engine(a), None, a)  # a request in flight on "a"
        loading_b = asyncio.create_task(state.target("b"))
        await asyncio.sleep(1.0)
        assert not loading_b.done() and not a.live  # "b" waits for a's last request: one whole model at a time
        assert a.engine.ready  # "a" still finishes its request
        admission.slot.release()
        b, _ = await asyncio.wait_for(loading_b, 60)
        assert list(state.models.loaded) == ["b"] and b.live and a.engine._executor._shutdown  # "a" closed
        with pytest.raises(APIError) as caught:
            state.ready_engine(a)  # handed out before the unload: refused cleanly, never run on a closed engine
        assert caught.value.status_code == 503
        again, _ = await state.target("a")  # called again: loaded again, "b" unloaded
        assert again is not a and again.live and not b.live and list(state.models.loaded) == ["a"]
        state.models.close()
        assert again.engine._executor._shutdown and not state.models.loaded

    asyncio.run(scenario())


def test_failed_gone_removed_and_refused_models(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))  # no weights

    async def scenario() -> None:
        state = _state(tiny_model_dir, max_full_models=1)
        state.models.add("broken", broken)
        with pytest.raises(APIError) as caught:
            await state.target("broken")
        assert caught.value.status_code == 503 and caught.value.code == "model_load_failed"
        started = time.monotonic()
        with pytest.raises(APIError, match="tried again 60 s after the failure"):
            await state.target("broken")  # remembered: answered at once, not loaded again
        assert time.monotonic() - started < 0.5

        state.models.add("gone", tmp_path / "deleted")
        with pytest.raises(APIError, match="its files are gone") as caught:
            await state.target("gone")
        assert caught.value.status_code == 404 and "gone" not in state.models  # dropped

        state.models.add("b", tiny_model_dir)
        loading = asyncio.create_task(state.target("b"))
        await asyncio.sleep(0)  # the load has started
        state.models.remove("b")  # e.g. its job was cancelled as it finished
        with pytest.raises(APIError, match="no longer served"):
            await loading
        assert not state.models.loaded

        full = _state(tiny_model_dir, max_full_models=1, max_queue=1)
        full.models.add("a", tiny_model_dir)
        loading = asyncio.create_task(full.target("a"))
        await asyncio.sleep(0)  # its wait for the load holds the one place of the queue
        with pytest.raises(APIError, match="at capacity") as caught:
            await full.target("a")
        assert caught.value.status_code == 503
        await loading
        assert full.queue.in_use == 0  # the place is given back once loaded; admit() takes its own
        full.models.close()

        off = _state(tiny_model_dir, max_full_models=0)
        off.models.add("x", tiny_model_dir)
        with pytest.raises(APIError, match=r"serves no whole models \(serve.max_full_models is 0\)"):
            await off.target("x")

    asyncio.run(scenario())
