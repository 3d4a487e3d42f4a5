"""SFT and DPO stages on the tiny model: label masking, EOS, handoff, golden losses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines.data import run_data
from pipelines.manifest import read_manifest, write_manifest
from recipes import LatheError, load_recipe

SMALL = ["data.replay.enabled=false", "sft.packing=false", "data.skills.n_train=32", "data.skills.n_eval=6",
         "data.skills.n_preference=16",
         "sft.max_steps=4", "sft.batch_size=4", "sft.logging_steps=1", "sft.learning_rate=1e-3",
         "preference.max_steps=3", "preference.batch_size=4", "preference.logging_steps=1"]


@pytest.fixture(scope="module")
def staged(tiny_model_dir, tmp_path_factory):
    """artifacts/ with base (the tiny model) and data stages done."""
    root = tmp_path_factory.mktemp("train") / "artifacts"
    recipe = load_recipe("default", SMALL)
    (root / "base").mkdir(parents=True)
    write_manifest(root / "base", stage="base", inputs={}, settings={}, outputs={"model_dir": str(tiny_model_dir)})
    run_data(recipe, root)
    return root, recipe


def test_sft_labels_mask_the_prompt_and_keep_eos(staged):
    """The encoder's labels reach the model through TRL's preparation and collator unchanged."""
    from trl import SFTConfig, SFTTrainer

    from pipelines import training
    from pipelines.sft import load_split

    root, recipe = staged
    base = Path(read_manifest("base", root)["outputs"]["model_dir"])
    tokenizer = training.load_tokenizer(base)
    train, encoded = load_split(root / "data" / "sft_train.jsonl", tokenizer, assistant_only=True)
    args = SFTConfig(**training.common_args(recipe.sft, root / "tmp", False), max_length=256,
                     eos_token=tokenizer.eos_token)
    trainer = SFTTrainer(model=training.load_model(base, recipe.sft), args=args, train_dataset=train,
                         processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    eos = tokenizer.eos_token_id
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        real = mask.bool()
        trained = labels[real] != -100
        decoded_prompt = tokenizer.decode(ids[real][~trained])
        decoded_answer = tokenizer.decode(labels[real][trained])
        assert "<|im_start|>user" in decoded_prompt and "<|im_start|>" not in decoded_answer
        # pad == eos here: the answer's closing <|im_end|> must still be a label, or the model never stops.
        assert labels[real][trained].tolist()[-1] == eos, decoded_answer
        assert (labels[~real] == -100).all()
    first = trainer.train_dataset[0]
    match = next(enc for enc in encoded if enc.input_ids == first["input_ids"])
    assert first["labels"] == match.labels


def test_sft_then_dpo_hand_off_adapters_and_merged_models(staged, tmp_path, monkeypatch):
    from pipelines.preference import run_preference
    from pipelines.sft import run_sft
    from recipes import events

    root, recipe = staged
    torch.manual_seed(0)
    monkeypatch.setenv(events.ENV, str(tmp_path / "events.jsonl"))  # what the jobs plane watches
    sft = run_sft(recipe, root)
    manifest = read_manifest("sft", root)
    assert Path(sft["adapter_dir"], "adapter_model.safetensors").exists()
    assert json.loads(Path(sft["adapter_dir"], "lathe_base.json").read_text())["base_model_dir"] == sft["base_model_dir"]
    assert manifest["metrics"]["train_tokens_per_second"] > 0
    history = json.loads((root / "sft" / "log_history.json").read_text())
    losses = [row["loss"] for row in history if "loss" in row]
    assert len(losses) == 4
    assert history[-1]["eval_loss"] == pytest.approx(manifest["metrics"]["eval_loss"])  # the final validation
    # Golden values on the tiny model (fixed seeds): a change here is a behaviour change, not noise.
    assert losses[0] == pytest.approx(6.1523, abs=2e-3)
    assert losses[-1] < losses[0]
    # The progress as structured events: each step's numbers, as logged, with the step and the total.
    seen = [e for e in events.EventReader(tmp_path / "events.jsonl").read() if e["stage"] == "sft"]
    assert seen[0]["type"] == "train_begin" and seen[0]["total_steps"] == 4
    steps = [e for e in seen if e["type"] == "log" and "train_loss" in e["metrics"]]
    assert [e["step"] for e in steps] == [1, 2, 3, 4] and [e["metrics"]["train_loss"] for e in steps] == losses
    [end] = [e for e in seen if e["type"] == "train_end"]
    assert end["step"] == 4 and end["metrics"]["train_loss"] == pytest.approx(sum(losses) / 4)
    assert seen[-1]["metrics"]["valid_loss"] == pytest.approx(manifest["metrics"]["eval_loss"])  # the final validation

    pref = run_preference(recipe, root)
    assert Path(pref["model_dir"], "model.safetensors").exists()
    assert pref["base_model_dir"] == sft["model_dir"]
    history = json.loads((root / "preference" / "log_history.json").read_text())
    assert history and all("loss" in row or "eval_loss" in row for row in history)

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(pref["model_dir"])
    assert merged.generation_config.eos_token_id == read_tokenizer_eos(pref["model_dir"])
    assert not any("lora" in name for name, _ in merged.named_parameters())


def read_tokenizer_eos(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir).eos_token_id


def test_qlora_on_cpu_is_a_clear_error(staged):
    from pipelines.sft import run_sft
    from recipes import LatheError

    root, _ = staged
    with pytest.raises(LatheError, match="qlora needs a CUDA GPU"):
        run_sft(load_recipe("default", SMALL + ["sft.method=qlora"]), root)


def test_eval_steps_measure_validation_loss_during_training_and_keep_the_best(staged, tmp_path):
    import shutil

    from pipelines.sft import run_sft
    from recipes import LatheError

    root, _ = staged
    copy = tmp_path / "artifacts"
    for stage in ("base", "data"):
        shutil.copytree(root / stage, copy / stage)
    recipe = load_recipe("default", SMALL + ["sft.eval_steps=2", "sft.load_best_model_at_end=true"])
    torch.manual_seed(0)
    run_sft(recipe, copy)
    history = json.loads((copy / "sft" / "log_history.json").read_text())
    evals = [row["step"] for row in history if "eval_loss" in row]
    assert evals[:2] == [2, 4]  # during training, then once more at the end
    with pytest.raises(LatheError, match="load_best_model_at_end needs eval_steps"):
        load_recipe("default", SMALL + ["sft.load_best_model_at_end=true"])


def test_loss_curves_are_files_dvc_plots_can_draw(tmp_path):
    """`dvc plots show` with the project's own plots definitions draws training and validation loss (a file whose
    rows do not all carry the plotted field makes DVC fail with "argument of type 'NoneType' is not iterable")."""
    import subprocess
    import sys
    from types import SimpleNamespace

    import yaml

    from pipelines.training import write_log_history
    from tests.conftest import ROOT

    history = [{"loss": 2.0, "step": 5}, {"loss": 1.5, "step": 10}, {"eval_loss": 1.8, "step": 10},
               {"train_loss": 1.7, "train_runtime": 3.0, "step": 10}]
    (tmp_path / "artifacts" / "sft").mkdir(parents=True)
    write_log_history(SimpleNamespace(state=SimpleNamespace(log_history=history)), tmp_path / "artifacts/sft/log_history.json")
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"][:1]  # SFT loss
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}))
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True)
    shown = json.loads(subprocess.run([dvc, "plots", "show", "--json"], cwd=tmp_path, capture_output=True, text=True,
                                      check=True).stdout)
    assert "errors" not in shown, shown["errors"]
    (plot,) = shown["data"]["SFT loss"]
    values = plot["content"]["data"]["values"]
    assert sorted((v["step"], "loss" if "loss" in v else "eval_loss", v.get("loss", v.get("eval_loss"))) for v in values) == [
        (5, "loss", 2.0), (10, "eval_loss", 1.8), (10, "loss", 1.5)]


def test_optimizer_and_schedule_fields_reach_the_trainer(tmp_path):
    """Each recipe field a fine-tuning job can set is a TrainingArguments / DPOConfig field of the run."""
    from trl import DPOConfig

    from pipelines import training

    recipe = load_recipe("default", ["preference.weight_decay=0.01", "preference.max_grad_norm=0.5",
                                     "preference.lr_scheduler=cosine_with_min_lr",
                                     "preference.lr_scheduler_kwargs={min_lr_rate: 0.1}",
                                     "preference.loss_type=[sigmoid_norm, sft]", "preference.loss_weights=[1.0, 0.25]"])
    cfg = recipe.preference
    args = DPOConfig(**training.common_args(cfg, tmp_path, False), beta=cfg.beta, loss_type=cfg.loss_type,
                     loss_weights=cfg.loss_weights)
    assert (args.weight_decay, args.max_grad_norm, args.lr_scheduler_kwargs) == (0.01, 0.5, {"min_lr_rate": 0.1})
    assert getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == "cosine_with_min_lr"
    assert args.loss_type == ["sigmoid_norm", "sft"] and args.loss_weights == [1.0, 0.25]


def test_init_adapter_continues_a_fine_tune_from_its_weights(staged, tmp_path):
    """A second SFT run from the first run's adapter starts where the first ended (its first loss is about the
    first run's last, far below a fresh adapter's first) and keeps the adapter's own LoRA shape."""
    import shutil

    from pipelines.sft import run_sft

    root, recipe = staged
    torch.manual_seed(0)
    first = run_sft(recipe, root)
    losses = [row["loss"] for row in json.loads((root / "sft" / "log_history.json").read_text()) if "loss" in row]
    adapter = tmp_path / "first-adapter"
    shutil.copytree(first["adapter_dir"], adapter)
    torch.manual_seed(0)
    run_sft(load_recipe("default", SMALL + [f"sft.init_adapter={adapter}", "sft.lora.r=2"]), root)
    again = [row["loss"] for row in json.loads((root / "sft" / "log_history.json").read_text()) if "loss" in row]
    assert again[0] < losses[0] - 0.5 * (losses[0] - losses[-1])  # continued, not started over
    config = json.loads((root / "sft" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == json.loads((adapter / "adapter_config.json").read_text())["r"] != 2
    with pytest.raises(LatheError, match="not a LoRA adapter folder"):
        run_sft(load_recipe("default", SMALL + [f"sft.init_adapter={tmp_path}"]), root)
