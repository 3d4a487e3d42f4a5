"""A registered version carries an MLmodel (pyfunc, serving/pyfunc.py), so MLflow's own tools load and serve the
champion: `mlflow.pyfunc.load_model` and `mlflow models serve` answer with the model's greedy chat replies."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from registry import models
from tests.servers import free_port


def _direct(model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.fixture
def champion(store_uri, smollm2_dir, tmp_path):
    """Stored the way the pipeline stores a LoRA version: its adapter on the base registered once (an adapter
    as PEFT initialises it, B = 0, so the replies are the base's; that the merge itself is exact is
    tests/registry/test_stack.py's)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from registry.stack import AdapterStack

    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(smollm2_dir), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(adapter)
    info = models.register("chat", smollm2_dir, metrics={"skills/exact_match": 0.5}, tags={},
                           stack=AdapterStack(smollm2_dir, [("sft", adapter)], "bfloat16"))
    assert (info.model_dir / "lathe_stack.json").is_file()
    models.set_alias("chat", "champion", info.version)
    return info


def test_mlflow_loads_and_serves_the_champion(champion, smollm2_dir, tmp_path):
    import mlflow.pyfunc

    expected = _direct(smollm2_dir, "Say hi.", 12)
    assert expected.strip()
    loaded = mlflow.pyfunc.load_model("models:/chat@champion")
    assert loaded.predict(["Say hi."], params={"max_new_tokens": 12}) == [expected]

    port = free_port()
    # MLflow starts `uvicorn` by name: the venv's bin must be on PATH (as with an activated venv).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", "models:/chat@champion",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=open(log := tmp_path / "serve.log", "w"))
    try:
        deadline, answer = time.monotonic() + 180, None
        while time.monotonic() < deadline and server.poll() is None and answer is None:
            try:
                reply = httpx2.post(f"http://127.0.0.1:{port}/invocations", timeout=120,
                                    json={"inputs": [[{"role": "user", "content": "Say hi."}]],
                                          "params": {"max_new_tokens": 12}})
                answer = reply.json()
            except httpx2.TransportError:
                time.sleep(1)
        assert answer == {"predictions": [expected]}, log.read_text()[-3000:]
    finally:
        server.terminate()
        server.wait(timeout=30)
