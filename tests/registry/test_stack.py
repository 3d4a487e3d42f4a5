"""A LoRA chain is registered as its adapters on a base stored once, and resolves to the very weights the
training stages merged: the base is not copied again per version, and what `lathe serve` / the gate load from
the registry is, tensor for tensor, the model that was evaluated."""

from __future__ import annotations

from pathlib import Path

import pytest

from recipes.identity import model_hash
from registry import models, stack
from registry.stack import AdapterStack
from tests.tiny_model import build_tiny_model

DTYPE = "bfloat16"


def _train_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with non-zero random weights (as if trained) on `base_dir`, saved like a stage saves it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, DTYPE))
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


def _chain(tmp: Path, base: Path, seed: int) -> tuple[AdapterStack, Path]:
    """sft then preference, as the stages run them: each adapter trained on the previous stage's merge."""
    sft = _train_adapter(base, tmp / f"sft{seed}" / "adapter", seed)
    sft_model = stack.merge_adapters(base, [sft], tmp / f"sft{seed}" / "model", DTYPE)
    pref = _train_adapter(sft_model, tmp / f"pref{seed}" / "adapter", seed + 100)
    tuned = stack.merge_adapters(sft_model, [pref], tmp / f"pref{seed}" / "model", DTYPE)
    return AdapterStack(base, [("sft", sft), ("preference", pref)], DTYPE), tuned


def _tensors(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def base(tmp_path) -> Path:
    return build_tiny_model(tmp_path / "base")


def test_a_lora_version_stores_adapters_and_resolves_to_the_merged_weights(store_uri, base, tmp_path):
    chain, tuned = _chain(tmp_path, base, seed=1)
    info = models.register("tiny", tuned, metrics={"skills/exact_match": 0.5}, tags={}, stack=chain)

    stored = info.model_dir
    assert not (stored / "model.safetensors").exists()  # no merged copy in the registry
    assert sorted(p.name for p in (stored / "adapters").iterdir()) == ["0-sft", "1-preference"]
    assert _size(stored) < _size(tuned) / 2
    base_version = models.get_version("tiny-base", "1")
    assert info.tags[models.BASE_TAG] == "models:/tiny-base/1"
    assert base_version.tags[models.CONTENT_TAG] == model_hash(base)

    resolved = models.resolve("models:/tiny/1")
    assert resolved != tuned and ".lathe/merged" in resolved.as_posix()
    expected, got = _tensors(tuned), _tensors(resolved)
    assert expected.keys() == got.keys()
    assert all((expected[k] == got[k]).all() for k in expected)  # bit for bit, every tensor
    assert models.resolve("candidate", default_name="tiny") == resolved  # merged once, then found

    # A second version trained on the same base reuses the registered base: it is stored once.
    other, other_tuned = _chain(tmp_path, base, seed=2)
    second = models.register("tiny", other_tuned, metrics={"skills/exact_match": 0.6}, tags={}, stack=other)
    assert second.version == "2" and second.tags[models.BASE_TAG] == "models:/tiny-base/1"
    from mlflow import MlflowClient

    assert [str(v.version) for v in MlflowClient().search_model_versions("name='tiny-base'")] == ["1"]
    assert models.get_version("tiny-base", "candidate") is None  # a base is never a candidate for serving


def test_a_changed_base_is_refused_not_merged_into_a_wrong_model(store_uri, base, tmp_path):
    chain, tuned = _chain(tmp_path, base, seed=3)
    info = models.register("tiny", tuned, metrics={"m": 1.0}, tags={}, stack=chain)
    base_files = models.resolve("models:/tiny-base/1")
    (base_files / "config.json").write_text((base_files / "config.json").read_text().replace("{", "{\"x\": 1,", 1))
    with pytest.raises(Exception, match="does not have the content it was trained on"):
        models.resolve(f"models:/tiny/{info.version}")
