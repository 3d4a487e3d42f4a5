"""Judge a model behind an OpenAI-compatible server (Lathe's own, vLLM, …) with lm-eval's
`local-completions` client, on the same suites and settings as a local model directory.

- Log-likelihood suites (MMLU, HellaSwag) need `echo` + `logprobs` on `/v1/completions`: Lathe's
  server and vLLM have them (a chat-only endpoint cannot score them).
- Prompts are tokenized here, with a local copy of the served model's tokenizer, and sent as token
  ids: lm-eval needs the tokens to know where each answer choice starts.
- Chat-template suites (skills) are rendered here too: with `tokenizer_backend=huggingface` lm-eval's
  `TemplateAPI.apply_chat_template` calls the tokenizer's own template and sends the token ids of
  the result, so the server sees what the in-process `hf` backend would feed the model.
- A BOS token is added exactly where the `hf` backend adds one (see `_bos_policy`).

`OPENAI_API_KEY`, when set, is sent as the bearer token (lm-eval reads the same variable).
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from recipes.errors import LatheError

from eval.cache import tree_sha256

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "vocab.json", "vocab.txt", "merges.txt",
                   "tokenizer.model", "spiece.model")
"""The files of a model directory that decide tokens and the chat template (hashed into the settings)."""
DEFAULT_CONTEXT = 2048  # lm-eval's own default, when neither the server nor the tokenizer dir says


@dataclass
class EndpointModel:
    """One served model, seen through lm-eval's `local-completions` client (the harness's backend)."""

    url: str
    """Base URL, e.g. http://127.0.0.1:8000/v1 (requests go to `<url>/completions`)."""
    model_name: str
    tokenizer_dir: Path
    context_length: int
    card: dict
    """The server's `/models` entry: `root` (what it loaded) and, for Lathe, the registry `version`."""
    bos: dict[bool, bool]
    """chat-templated? → add a BOS token to the prompt (what the hf backend would do)."""
    tokenizer_hash: str
    _clients: dict = field(default_factory=dict, repr=False)

    @property
    def identity(self) -> str:
        """The cache's "model hash": there are no weight files here, so the endpoint, the served name and
        what the server says it loaded stand for them."""
        who = {"endpoint": self.url, "model": self.model_name, "root": self.card.get("root"),
               "version": self.card.get("version")}
        return hashlib.sha256(json.dumps(who, sort_keys=True).encode()).hexdigest()

    def header(self) -> dict:
        return {"model_dir": None, "model_hash": self.identity, "backend": "local-completions",
                "endpoint": self.url, "served_model": self.model_name, "served_root": self.card.get("root"),
                "served_version": self.card.get("version")}

    def settings(self, chat_template: bool) -> dict:
        return {"backend": "local-completions", "endpoint": self.url, "served_model": self.model_name,
                "served_root": self.card.get("root"), "served_version": self.card.get("version"),
                "tokenizer_dir": str(self.tokenizer_dir), "tokenizer_sha256": self.tokenizer_hash,
                "context_length": self.context_length, "add_bos_token": self.bos[chat_template],
                "batch_size": 1}

    def load(self, chat_template: bool):
        """lm-eval's client; one per BOS setting (a template that writes its own BOS must not get a second)."""
        add_bos = self.bos[chat_template]
        if add_bos not in self._clients:
            from lm_eval.api.registry import get_model

            self._clients[add_bos] = get_model("local-completions").create_from_arg_obj(
                {"model": self.model_name, "base_url": f"{self.url}/completions", "tokenizer_backend": "huggingface",
                 "tokenizer": str(self.tokenizer_dir), "max_length": self.context_length, "add_bos_token": add_bos},
                {"batch_size": 1})  # one prompt per request: every OpenAI-compatible server takes that
        return self._clients[add_bos]


def connect(url: str, model_name: str, tokenizer_dir: str | Path, *, timeout: float = 10.0) -> EndpointModel:
    """Check that `url` serves `model_name` and that `tokenizer_dir` holds a tokenizer; read the context length."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise LatheError(f"--endpoint {url!r}: give the server's base URL, e.g. http://127.0.0.1:8000/v1")
    if url.endswith(("/completions", "/chat/completions")):
        raise LatheError(f"--endpoint {url!r}: give the base URL without the route, e.g. "
                         f"{url.rsplit('/chat/completions', 1)[0].rsplit('/completions', 1)[0]}")
    tokenizer_dir = Path(tokenizer_dir)
    if not any((tokenizer_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise LatheError(f"--tokenizer {tokenizer_dir}: no tokenizer.json or tokenizer_config.json there; give the "
                         "local Hugging Face directory of the served model (its tokenizer and chat template)")
    listed = _get_json(f"{url}/models", timeout).get("data") or []
    card = next((m for m in listed if m.get("id") == model_name), None)
    if card is None:
        names = ", ".join(repr(m.get("id")) for m in listed) or "none"
        raise LatheError(f"{url} does not serve a model named {model_name!r} (it serves: {names}); "
                         "pass the served name with --served-model")
    context = card.get("max_model_len") or _local_context_length(tokenizer_dir) or DEFAULT_CONTEXT
    return EndpointModel(url=url, model_name=model_name, tokenizer_dir=tokenizer_dir.resolve(),
                         context_length=int(context), card=card, bos=_bos_policy(tokenizer_dir),
                         tokenizer_hash=tokenizer_sha256(tokenizer_dir))


def tokenizer_sha256(tokenizer_dir: Path) -> str:
    return tree_sha256([tokenizer_dir / n for n in TOKENIZER_FILES if (tokenizer_dir / n).is_file()])


def _get_json(url: str, timeout: float) -> dict:
    key = os.environ.get("OPENAI_API_KEY")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        hint = " Set OPENAI_API_KEY to an API key of the server." if exc.code in (401, 403) else ""
        raise LatheError(f"GET {url} answered HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}.{hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise LatheError(f"cannot read {url}: {getattr(exc, 'reason', exc)}. Is the server running "
                         "(`lathe serve`) and is this its OpenAI-compatible base URL (…/v1)?") from None


def _local_context_length(tokenizer_dir: Path) -> int | None:
    """What the hf backend would use when the server does not say: the config's positions, else the
    tokenizer's model_max_length (ignored when it is transformers' "unset" huge number)."""
    for name, keys in (("config.json", ("n_positions", "max_position_embeddings", "n_ctx")),
                       ("tokenizer_config.json", ("model_max_length",))):
        path = tokenizer_dir / name
        if path.is_file():
            data = json.loads(path.read_text())
            data = data.get("text_config", data) if name == "config.json" else data
            for key in keys:
                if isinstance(data.get(key), int) and data[key] < 10**7:
                    return data[key]
    return None


def _bos_policy(tokenizer_dir: Path) -> dict[bool, bool]:
    """The hf backend lets the tokenizer add its special tokens (e.g. Llama 3's BOS), except on a prompt
    whose text already starts with the BOS string (a chat template that writes it). lm-eval's API client
    adds nothing unless told: tell it the same."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    bos = tokenizer.bos_token
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]
    templated_has_bos = False
    if adds_bos and tokenizer.chat_template:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                                 add_generation_prompt=True)
        templated_has_bos = bool(bos) and rendered.startswith(bos)
    return {False: adds_bos, True: adds_bos and not templated_has_bos}
