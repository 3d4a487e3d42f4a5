"""Security: API keys never reach a log, the database or a response; no path traversal through file,
batch or job ids or model names; only safetensors weights are ever loaded (a pickle is refused before
it is opened); a model's own Python code (`trust_remote_code`) runs only when the recipe opts in.

The server here is a real child process with API keys on (`platform.auth: on`) and DEBUG logging,
so its whole log can be searched for the keys it saw."""

from __future__ import annotations

import asyncio
import json
import pickle
import secrets
import shutil
from pathlib import Path
from urllib.parse import quote

import httpx2
import pytest

from recipes import LatheError, Recipe
from tests.reliability.conftest import MODEL_NAME


@pytest.fixture(scope="module")
def secure_server(tiny_model_dir, tmp_path_factory):
    from accounts.keys import create_key, revoke_key
    from accounts.store import Store
    from recipes.schema import PlatformConfig
    from tests.reliability.conftest import server_process

    work = tmp_path_factory.mktemp("secure")
    config = PlatformConfig(db_path=str(work / "platform.db"), auth="on")
    store = Store(config.db_path)
    _, good = create_key(store, "tester", config.default_tier, config)
    revoked, revoked_secret = create_key(store, "old", config.default_tier, config)
    revoke_key(store, revoked.id)
    store.close()
    sentinel = work / "outside-secret.txt"  # what a traversal would read
    sentinel.write_text(f"SENTINEL-{secrets.token_hex(8)}")
    with server_process(tiny_model_dir, work, platform={"auth": "on"}, log_level="debug") as (base, proc, log):
        yield {"base": base, "key": good, "revoked": revoked_secret, "log": log, "work": work, "sentinel": sentinel}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ---------------------------------------------------------------------------------------------- keys


def test_api_keys_never_reach_logs_database_or_responses(secure_server, tally):
    """Keys sent where keys go (the Authorization header; a stray `api_key` body field, whose name
    alone is logged). A key a client pastes into a URL or a `model` name is logged like any path or
    name: that is the client's mistake, not something the server can tell apart."""
    base, key = secure_server["base"], secure_server["key"]
    key_id, secret = key.split("-", 2)[1:]
    wrong = f"lathe-{key_id}-{secrets.token_urlsafe(32)}"  # the right id with a wrong secret
    stranger = f"sk-{secrets.token_urlsafe(24)}"
    chat = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    bodies = []
    with httpx2.Client(base_url=base, timeout=60) as http:
        attempts = [
            ("POST", "/v1/chat/completions", _auth(key), chat, 200),
            ("POST", "/v1/chat/completions", _auth(key), {**chat, "stream": True}, 200),
            ("POST", "/v1/completions", _auth(key), {"model": MODEL_NAME, "prompt": "the", "max_tokens": 3}, 200),
            ("POST", "/v1/chat/completions", _auth(key), {**chat, "api_key": key, "temperature": 9}, 400),
            ("POST", "/v1/chat/completions", _auth(key), {**chat, "model": "nope"}, 404),
            ("GET", "/v1/usage", _auth(key), None, 200),
            ("GET", "/metrics", _auth(key), None, 200),
            ("POST", "/v1/chat/completions", _auth(wrong), chat, 401),
            ("POST", "/v1/chat/completions", _auth(secure_server["revoked"]), chat, 401),
            ("POST", "/v1/chat/completions", _auth(stranger), chat, 401),
            ("POST", "/v1/chat/completions", {"Authorization": f"Basic {key}"}, chat, 401),
            ("POST", "/v1/chat/completions", {"Authorization": key}, chat, 401),
            ("POST", "/v1/chat/completions", {}, chat, 401),
            ("GET", "/v1/files/file-nope", _auth(key), None, 404),
        ]
        for method, path, headers, body, expected in attempts:
            response = http.request(method, path, headers=headers, json=body)
            assert response.status_code == expected, (method, path, response.text[:300])
            bodies.append(response.text)
    tally.requests(len(attempts))
    tally.fault(len([a for a in attempts if a[-1] in (401, 400, 404)]))

    log = secure_server["log"].read_text(errors="replace")
    assert "POST /v1/chat/completions" in log or "chat" in log  # the log is the server's, and it has content
    stored = b"".join(p.read_bytes() for p in secure_server["work"].glob("platform.db*"))  # + WAL and shm
    for secret_text in (key, secret, wrong.rsplit("-", 1)[1], stranger, secure_server["revoked"].rsplit("-", 1)[1]):
        assert secret_text not in log, "an API key was logged"
        assert secret_text.encode() not in stored, "an API key was stored in clear"
        for body in bodies:
            assert secret_text not in body, "an API key was echoed in a response"


# ---------------------------------------------------------------------------------------------- traversal

TRAVERSALS = ["../../../../etc/passwd", "..%2F..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
              "..%252F..%252Fetc%252Fpasswd", "....//....//etc/passwd", "..\\..\\..\\etc\\passwd", "%2Fetc%2Fpasswd",
              "file-..%2F..%2Foutside-secret.txt", "..%2Foutside-secret.txt", "%00", "file-%00", "." * 300, "a" * 5000]


def test_ids_in_paths_never_reach_the_file_system(secure_server, tally):
    base, key, sentinel = secure_server["base"], secure_server["key"], secure_server["sentinel"]
    schema = httpx2.get(f"{base}/openapi.json", headers=_auth(key)).json()
    templates = [(method.upper(), path) for path, ops in schema["paths"].items() for method in ops
                 if "{" in path and method in ("get", "post", "delete")]
    assert any("file_id" in path for _, path in templates)
    ids = TRAVERSALS + [quote(str(sentinel), safe=""), quote(str(sentinel.relative_to(Path("/"))), safe="")]
    sent = 0
    with httpx2.Client(base_url=base, timeout=30, headers=_auth(key)) as http:
        for method, template in templates:
            for raw in ids:
                path = template.split("{")[0] + raw + template.split("}", 1)[1]
                response = http.request(method, path)
                sent += 1
                assert response.status_code in (400, 404, 405), (method, path, response.status_code, response.text[:200])
                assert sentinel.read_text() not in response.text and "root:x:0:0" not in response.text
    tally.requests(sent)
    tally.bad_input(sent)


@pytest.mark.parametrize("model", ["../../../../etc/passwd", "/etc/passwd", "tiny/../tiny", "./tiny", "tiny/",
                                   "TINY", "tiny\x00", " tiny", "models:/lathe-default@champion", "champion",
                                   "..", "~", "{model_dir}", "{sentinel}"])
def test_model_names_are_names_not_paths(secure_server, tiny_model_dir, tally, model):
    """Only the served name (and configured adapter names) select a model; a path — even the served
    model's own directory — is an unknown model (404), never loaded or read."""
    base, key = secure_server["base"], secure_server["key"]
    model = model.format(model_dir=tiny_model_dir, sentinel=secure_server["sentinel"])
    tally.requests(3)
    tally.bad_input(3)
    with httpx2.Client(base_url=base, timeout=30, headers=_auth(key)) as http:
        chat = http.post("/v1/chat/completions", json={"model": model, "max_tokens": 2,
                                                       "messages": [{"role": "user", "content": "hi"}]})
        text = http.post("/v1/completions", json={"model": model, "prompt": "the", "max_tokens": 2})
        card = http.get(f"/v1/models/{quote(model, safe='')}")
    for response in (chat, text):
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found", response.text
    assert card.status_code == 404
    for response in (chat, text, card):
        assert secure_server["sentinel"].read_text() not in response.text


# ---------------------------------------------------------------------------------------------- weights


class _Tripwire:
    """Unpickling this writes a file: proof that a pickle was opened."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "a pickle was unpickled"))


@pytest.fixture()
def pickle_only_dir(tiny_model_dir, tmp_path) -> tuple[Path, Path]:
    """The tiny model's config and tokenizer with its weights as a (booby-trapped) pytorch_model.bin."""
    model_dir = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "unpickled.txt"
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": _Tripwire(marker)}))
    (model_dir / "decoy.safetensors").write_bytes(b"")  # not a weights file transformers would load
    return model_dir, marker


def test_the_base_stage_refuses_pickled_weights(pickle_only_dir, tmp_path, tally):
    from pipelines.base import run_base

    model_dir, marker = pickle_only_dir
    tally.fault()
    with pytest.raises(LatheError, match="safetensors"):
        run_base(Recipe.model_validate({"model": {"id": str(model_dir)}}), root=tmp_path / "artifacts")
    assert not marker.exists()


def test_the_server_refuses_pickled_weights_and_adapters(pickle_only_dir, tiny_model_dir, tmp_path, tally):
    from serving.app import create_app
    from serving.settings import ServerSettings

    model_dir, marker = pickle_only_dir
    platform = {"db_path": str(tmp_path / "platform.db")}
    tally.fault(2)
    with pytest.raises(LatheError, match="pytorch_model.bin.*only safetensors"):
        create_app(ServerSettings(model_dir=model_dir, platform=platform))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(_Tripwire(marker)))
    with pytest.raises(LatheError, match="adapter 'evil'.*adapter_model.safetensors"):
        create_app(ServerSettings(model_dir=tiny_model_dir, adapters={"evil": adapter}, platform=platform))
    assert not marker.exists()


def test_evaluation_and_training_refuse_pickled_weights(pickle_only_dir, tmp_path, tally):
    from eval.harness import run_suites
    from pipelines.training import load_model
    from recipes.schema import SFTConfig, SuiteConfig

    model_dir, marker = pickle_only_dir
    tally.fault(2)
    with pytest.raises(LatheError, match="safetensors"):
        run_suites(model_dir, [SuiteConfig(name="skills")], mirror_dir=tmp_path, skills_file=None,
                   out_dir=tmp_path / "eval")
    with pytest.raises(OSError, match="safetensors"):  # transformers' own refusal under use_safetensors=True
        load_model(model_dir, SFTConfig())
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- remote code

REMOTE_CODE = '''
from pathlib import Path
Path({marker!r}).write_text("the model's own code ran")
from transformers import LlamaConfig, LlamaForCausalLM


class EvilConfig(LlamaConfig):
    model_type = {model_type!r}


class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig

    def __init__(self, config):
        raise RuntimeError("remote code ran")
'''


def _remote_code_dir(tiny_model_dir: Path, where: Path, model_type: str) -> tuple[Path, Path]:
    """The tiny model with `auto_map` pointing at code of its own that leaves a marker when imported."""
    model_dir = where / f"remote-{model_type}"
    shutil.copytree(tiny_model_dir, model_dir)
    marker = where / f"ran-{model_type}.txt"
    (model_dir / "evil_code.py").write_text(REMOTE_CODE.format(marker=str(marker), model_type=model_type))
    config = json.loads((model_dir / "config.json").read_text())
    config.update(model_type=model_type, auto_map={"AutoConfig": "evil_code.EvilConfig",
                                                   "AutoModelForCausalLM": "evil_code.EvilModel"})
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir, marker


def test_trust_remote_code_is_off_unless_a_recipe_opts_in():
    from recipes.loader import RECIPES_DIR, load_recipe

    assert Recipe().model.trust_remote_code is False
    for path in RECIPES_DIR.glob("*.yaml"):
        opted_in = "trust_remote_code: true" in path.read_text()
        assert load_recipe(path).model.trust_remote_code is opted_in, path.name


@pytest.fixture(scope="module")
def staged_data(tmp_path_factory):
    from pipelines.data import run_data

    root = tmp_path_factory.mktemp("remote") / "artifacts"
    run_data(Recipe.model_validate({"data": {"skills": {"n_train": 8, "n_eval": 2, "n_preference": 0}}}), root)
    return root


def _stage_base(root: Path, model_dir: Path) -> None:
    from pipelines.manifest import write_manifest

    (root / "base").mkdir(parents=True, exist_ok=True)
    write_manifest(root / "base", stage="base", inputs={}, settings={}, outputs={"model_dir": str(model_dir)})


def test_the_sft_stage_passes_the_recipe_s_choice_to_transformers(tiny_model_dir, tmp_path, staged_data, tally):
    from pipelines.sft import run_sft

    model_dir, marker = _remote_code_dir(tiny_model_dir, tmp_path, "evil-llama")
    _stage_base(staged_data, model_dir)
    tally.fault(2)
    off = Recipe.model_validate({"sft": {"max_steps": 1, "batch_size": 2}})
    with pytest.raises((ValueError, LatheError), match="trust_remote_code"):
        run_sft(off, staged_data)
    assert not marker.exists()
    opted_in = Recipe.model_validate({"model": {"trust_remote_code": True}, "sft": {"max_steps": 1, "batch_size": 2}})
    with pytest.raises(RuntimeError, match="remote code ran"):
        run_sft(opted_in, staged_data)
    assert marker.exists()  # opting in does run it: the flag reached from_pretrained


def test_the_server_never_runs_a_model_s_own_code(tiny_model_dir, tmp_path, tally):
    """A known architecture with an `auto_map` loads with transformers' own class; an unknown one
    fails to load. Either way the model's code never runs (the server has no opt-in)."""
    from serving.engine import create_engine
    from serving.settings import ServerSettings

    tally.fault(2)
    known, known_marker = _remote_code_dir(tiny_model_dir, tmp_path, "llama")
    engine = create_engine(ServerSettings(model_dir=known))
    asyncio.run(engine.load())
    assert engine.ready and type(engine.model).__name__ == "LlamaForCausalLM"
    engine.close()
    unknown, unknown_marker = _remote_code_dir(tiny_model_dir, tmp_path, "evil-llama")
    engine = create_engine(ServerSettings(model_dir=unknown))
    with pytest.raises(ValueError, match="trust_remote_code"):
        asyncio.run(engine.load())
    engine.close()
    assert not known_marker.exists() and not unknown_marker.exists()
