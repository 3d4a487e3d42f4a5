"""`lathe plan`: parameter counts against transformers and PEFT, model states against DeepSpeed's own
estimators, activations against Korthikanti et al.'s formula, and suggestions that really fit."""

from __future__ import annotations

import argparse
import json

import pytest

from pipelines import memory as estimator
from pipelines import plan as planner
from pipelines.memory import GIB, KNOWN_CONFIGS, Hardware, ModelShape, Workload, Zero
from recipes import LatheError, load_recipe
from recipes.loader import RECIPES_DIR

REAL_RECIPES = ["llama-3.1-8b-lora", "codellama-13b-lora", "mistral-nemo-12b-lora", "qwen2.5-14b-lora",
                "gpt-oss-20b-lora"]


def meta_model(cfg: dict):
    """The real transformers model for a config, on the meta device (no memory, no download)."""
    import torch
    from transformers import AutoModelForCausalLM, GptOssConfig, LlamaConfig, MistralConfig, Qwen2Config

    classes = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "gpt_oss": GptOssConfig}
    config = classes[cfg["model_type"]](**{k: v for k, v in cfg.items() if k != "model_type"})
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("name", sorted(KNOWN_CONFIGS))
def test_parameter_counts_equal_the_transformers_models(name):
    model = meta_model(KNOWN_CONFIGS[name])
    shape = ModelShape.from_config(name, KNOWN_CONFIGS[name])
    assert shape.total_params() == sum(p.numel() for p in model.parameters())
    # DeepSpeed's definition (stage3.model_to_params): the biggest module's own parameters.
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    assert shape.largest_layer_params() == largest


@pytest.mark.parametrize("name", ["meta-llama/llama-3.1-8b-instruct", "qwen/qwen2.5-14b-instruct", "openai/gpt-oss-20b"])
@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"]])
def test_lora_parameter_counts_equal_peft(name, targets):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(meta_model(KNOWN_CONFIGS[name]), LoraConfig(r=8, target_modules=targets, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert ModelShape.from_config(name, KNOWN_CONFIGS[name]).lora_params(8, targets) == trainable


def test_published_sizes():
    billions = {k: round(ModelShape.from_config(k, c).total_params() / 1e9, 2) for k, c in KNOWN_CONFIGS.items()}
    assert billions["meta-llama/llama-3.1-8b-instruct"] == 8.03
    assert billions["openai/gpt-oss-20b"] == 20.91


def test_a_local_model_directory_is_read_from_its_config(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    recipe = load_recipe("default", [f"model.id={tiny_model_dir}"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert planner.plan(recipe).params == model.num_parameters()


@pytest.mark.parametrize("gpus_per_node,nodes", [(1, 1), (8, 1), (4, 2), (8, 4)])
def test_model_states_equal_deepspeeds_estimators(gpus_per_node, nodes):
    pytest.importorskip("deepspeed", reason="the DeepSpeed comparison needs the `deepspeed` extra")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    for cfg in KNOWN_CONFIGS.values():
        shape = ModelShape.from_config("m", cfg)
        total, largest = shape.total_params(), shape.largest_layer_params()
        for offload in (False, True):
            assert estimator.zero2_model_states(total, gpus_per_node, nodes, offload) == \
                estimate_zero2_model_states_mem_needs(total, gpus_per_node, nodes, cpu_offload=offload)
            for offload_params in (False, True):
                for zero_init in (False, True):
                    ours = estimator.zero3_model_states(total, largest, gpus_per_node, nodes, offload, offload_params,
                                                      zero_init)
                    theirs = estimate_zero3_model_states_mem_needs(total, largest, gpus_per_node, nodes, offload,
                                                                   offload_params, zero_init)
                    assert ours == theirs[:2]


def test_full_finetuning_plan_reports_deepspeeds_zero3_numbers():
    recipe = load_recipe("llama-3.1-8b-lora", ["sft.method=full", "preference.enabled=false", "distributed.deepspeed=zero3"])
    shape = estimator.model_shape(recipe)
    _, gpu = estimator.zero3_model_states(shape.total_params(), shape.largest_layer_params(), 8, 1, False, False)
    sft = planner.plan(recipe, "8xH100-80GB").stages[0]
    assert sft.zero == "ZeRO-3" and sft.per_gpu_gib["model_states"] == round(gpu / GIB, 2)


def test_activations_follow_korthikanti_with_and_without_checkpointing():
    shape = ModelShape.from_config("llama", KNOWN_CONFIGS["meta-llama/llama-3.1-8b-instruct"])
    s, b, h, L, V = 4096, 2, 4096, 32, 128256
    work = Workload("sft", "lora", batch_size=b, grad_accum=1, seq_len=s, checkpointing=False)
    full = estimator.activation_bytes(shape, work)
    assert full["activations"] == L * 34 * s * b * h
    assert full["logits"] == s * b * V * estimator.LOGIT_BYTES
    ckpt = estimator.activation_bytes(shape, Workload("sft", "lora", b, 1, s, checkpointing=True))
    assert ckpt["activations"] == L * 2 * s * b * h + 34 * s * b * h
    dpo = estimator.activation_bytes(shape, Workload("preference", "lora", b, 1, s, True, sequences_per_row=2))
    assert dpo["activations"] == 2 * ckpt["activations"]


def test_qlora_and_zero3_shrink_the_frozen_base():
    shape = ModelShape.from_config("qwen", KNOWN_CONFIGS["qwen/qwen2.5-14b-instruct"])
    hw = Hardware(8, 1, "H100-80GB", 80)
    lora = Workload("sft", "lora", 1, 1, 1024, True)
    base16 = estimator.model_state_bytes(shape, lora, hw, Zero(2))[0]["base_weights"]
    assert base16 == 2 * shape.total_params()
    base4 = estimator.model_state_bytes(shape, Workload("sft", "qlora", 1, 1, 1024, True), hw, Zero(2))[0]["base_weights"]
    assert base4 < 0.4 * base16
    sharded = estimator.model_state_bytes(shape, lora, hw, Zero(3))[0]["base_weights"]
    assert sharded == base16 // 8 + 2 * shape.largest_layer_params()


@pytest.mark.parametrize("name", REAL_RECIPES)
def test_every_real_recipe_fits_the_hardware_it_names(name):
    result = planner.plan(load_recipe(name))
    assert result.fits, result.text()
    dist = load_recipe(name).distributed
    assert result.gpus == f"{dist.gpus_per_node * dist.nodes}x{dist.gpu}"
    assert dist.deepspeed and dist.gpus_per_node > 1


def test_a_plan_that_does_not_fit_suggests_overrides_that_do():
    overrides = ["sft.method=full", "preference.enabled=false", "distributed.deepspeed=null"]
    result = planner.plan(load_recipe("llama-3.1-8b-lora", overrides), "8xA100-40GB")
    sft = result.stages[0]
    assert not result.fits and not sft.fits and sft.total_gib > result.budget_gib
    fitting = [s for s in sft.suggestions if s.fits and s.overrides]
    assert any("zero3_offload" in " ".join(s.overrides) for s in fitting)
    assert any(s.change.startswith("16x") for s in fitting)  # more GPUs, with ZeRO-3
    for suggestion in fitting:  # each suggestion is a valid set of overrides that makes the recipe fit
        fixed = load_recipe("llama-3.1-8b-lora", overrides + ["distributed.gpu=A100-40GB"] + suggestion.overrides)
        assert planner.plan(fixed).fits, (suggestion, planner.plan(fixed).text())


def test_cpu_memory_is_checked_when_given():
    recipe = load_recipe("llama-3.1-8b-lora", ["sft.method=full", "preference.enabled=false",
                                              "distributed.deepspeed=zero3_offload"])
    roomy, tight = planner.plan(recipe, cpu_mem_gb=2000), planner.plan(recipe, cpu_mem_gb=64)
    assert roomy.fits and not tight.fits
    assert tight.stages[0].cpu_gib > 64


@pytest.mark.parametrize("text,count,per_node,memory", [("8xH100-80GB", 8, 8, 80), ("H100", 1, 1, 80),
                                                        ("16xA100-40GB", 16, 8, 40), ("2xFoo-12GB", 2, 2, 12)])
def test_gpu_strings(text, count, per_node, memory):
    hw = estimator.parse_gpus(text, load_recipe("default"))
    assert (hw.count, hw.gpus_per_node, hw.gpu_gib) == (count, per_node, memory)


def test_bad_gpu_string_and_unknown_model_are_clear_errors():
    with pytest.raises(LatheError, match="unknown GPU 'Foo'.*Foo-<N>GB"):
        estimator.parse_gpus("8xFoo", load_recipe("default"))
    with pytest.raises(LatheError, match="model.id: no config.json for 'acme/unknown-7b'"):
        planner.plan(load_recipe("default", ["model.id=acme/unknown-7b"]))


def test_main_prints_json_and_exit_code(capsys):
    recipe = load_recipe("qwen2.5-14b-lora")
    assert planner.main(recipe, argparse.Namespace(gpus="8xH100-80GB", cpu_mem_gb=None, json=True)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] and [s["stage"] for s in out["stages"]] == ["sft", "preference", "rl"]
    assert out["stages"][2]["per_gpu_gib"]["kv_cache"] > 0
    assert planner.main(recipe, argparse.Namespace(gpus="1xL4", cpu_mem_gb=None, json=False)) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_lathe_plan_command(capsys):
    from pipelines.cli import main

    code = main(["plan", "--recipe", str(RECIPES_DIR / "llama-3.1-8b-lora.yaml"), "--gpus", "8xH100-80GB"])
    out = capsys.readouterr().out
    assert code == 0 and "8.03B parameters" in out and "verdict: fits" in out

