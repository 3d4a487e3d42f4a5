"""The fine-tuning API's pure parts, without a server: the create request (OpenAI and Together fields),
the recipe a job runs, checkpoint spacing, names, and what the stage output and checkpoint folders say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import progress, workspace
from jobs.request import CreateJob, job_spec
from jobs.runner import StageExit
from recipes import LatheError, load_recipe
from serving.errors import APIError

ROOT = Path(__file__).resolve().parents[2]


def spec(**body):
    return job_spec(CreateJob(model="tiny", training_file="file-1", **body))


def recipe_for(spec_, overrides=(), validation_file=None):
    base = workspace.base_recipe("default", ROOT)
    return workspace.job_recipe(base, job_id="ftjob-abc", spec=spec_, seed=7, base_model_dir=Path("/models/base"),
                                train_file="/ws/files/file-1.jsonl", validation_file=validation_file,
                                model_name="tiny:ft-x-abc",
                                tracking_uri="sqlite:///m.db",
                                project_root=ROOT, overrides=list(overrides))


def test_openai_and_together_fields_merge_into_one_spec():
    s = spec(method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2, "batch_size": "auto"}}},
             lora_r=8, lora_alpha=16, lora_trainable_modules="q_proj, v_proj", n_checkpoints=3)
    assert s["method"] == "dpo" and s["beta"] == 0.2 and s["n_epochs"] == 2 and s["batch_size"] is None
    assert s["lora_r"] == 8 and s["target_modules"] == ["q_proj", "v_proj"] and s["n_checkpoints"] == 3
    together = spec(training_method={"method": "dpo", "dpo_beta": 0.3}, n_epochs=1, learning_rate=1e-4)
    assert together["method"] == "dpo" and together["beta"] == 0.3 and together["learning_rate"] == 1e-4
    assert spec()["method"] == "supervised"
    assert spec(n_evals=4, validation_file="file-v")["n_evals"] == 4 and spec(n_evals=0)["n_evals"] is None


@pytest.mark.parametrize("body, param", [
    ({"hyperparameters": {"n_epochs": 2}, "n_epochs": 3}, "n_epochs"),
    ({"method": {"type": "reinforcement"}}, "method.type"),
    ({"method": {"type": "supervised"}, "training_method": {"method": "dpo"}}, "training_method.method"),
    ({"lora": True, "training_type": {"type": "Full"}}, "lora"),
    ({"training_type": {"type": "Full", "lora_r": 8}}, "training_type.lora_r"),  # LoRA settings on a Full job
    ({"lora": False, "lora_alpha": 16}, "lora_alpha"),
    ({"training_type": {"type": "Full"}, "from_checkpoint": "ftjob-1"}, "from_checkpoint"),
    ({"learning_rate": 1e-4, "hyperparameters": {"learning_rate_multiplier": 2}}, "learning_rate"),
    ({"hyperparameters": {"beta": 0.1}}, "hyperparameters.beta"),
    ({"suffix": "no spaces allowed"}, "suffix"),
    ({"n_evals": 3}, "n_evals"),  # validation loss needs a validation_file
    ({"from_checkpoint": "ftjob-1", "lora_r": 8}, "lora_r"),  # the continued adapter keeps its own LoRA settings
    ({"training_method": {"method": "dpo", "simpo_gamma": 0.5}}, "training_method.simpo_gamma"),
    ({"training_method": {"method": "dpo", "dpo_reference_free": True}}, "training_method.dpo_reference_free"),
    ({"training_method": {"method": "sft", "rpo_alpha": 0.5}}, "training_method"),
    ({"lr_scheduler": {"lr_scheduler_type": "linear", "lr_scheduler_args": {"min_lr_ratio": 0.1}}},
     "lr_scheduler.lr_scheduler_args.min_lr_ratio"),
    ({"seed": 1, "random_seed": 2}, "random_seed"),
    ({"learning_rate_warmup": 0.1}, "learning_rate_warmup"),  # neither API's field: refused, not ignored
    ({"hyperparameters": {"n_epoch": 2}}, "hyperparameters.n_epoch"),
    ({"training_type": {"type": "Lora", "lora_rank": 8}}, "training_type.lora_rank"),
    ({"wandb_api_key": "k"}, "wandb_api_key"),
    ({"from_hf_model": "org/model"}, "from_hf_model"),
])
def test_contradictions_and_unsupported_settings_are_400s_naming_the_field(body, param):
    with pytest.raises(APIError) as caught:
        spec(**body)
    assert caught.value.status_code == 400 and caught.value.param == param


def test_a_supervised_job_recipe_trains_the_served_base_on_the_uploaded_file_only():
    recipe = recipe_for(spec(hyperparameters={"learning_rate_multiplier": 0.5, "n_epochs": 2}, lora_r=4),
                        overrides=["sft.batch_size=2"])
    parsed = workspace.check(recipe)
    default = load_recipe("default")
    assert parsed.name == "ftjob-abc" and parsed.model.id == "/models/base"
    assert [d.path for d in parsed.data.sft] == ["/ws/files/file-1.jsonl"] and parsed.data.preference == []
    assert not parsed.data.skills.enabled and parsed.data.validation_fraction == 0 and parsed.data.on_bad_row == "skip"
    assert parsed.sft.learning_rate == pytest.approx(default.sft.learning_rate * 0.5)
    assert parsed.sft.epochs == 2 and parsed.sft.max_steps == -1 and parsed.sft.lora.r == 4 and parsed.sft.seed == 7
    assert parsed.sft.batch_size == 2  # the server's overrides come last
    assert parsed.sft.merge and not parsed.preference.enabled and not parsed.rl.enabled
    assert parsed.registry.model_name == "tiny-ft-x-abc" and parsed.registry.tracking_uri == "sqlite:///m.db"
    assert Path(parsed.eval.mirror_dir).is_absolute()
    assert parsed.eval.suites == default.eval.suites  # evaluated with the base recipe's suites


@pytest.mark.parametrize("body, stage, expected", [
    ({"weight_decay": 0.01}, "sft", {"weight_decay": 0.01}),
    ({"max_grad_norm": 0.5}, "sft", {"max_grad_norm": 0.5}),
    ({"warmup_ratio": 0.2}, "sft", {"warmup_ratio": 0.2}),
    ({"lr_scheduler": {"lr_scheduler_type": "linear"}}, "sft", {"lr_scheduler": "linear", "lr_scheduler_kwargs": {}}),
    ({"lr_scheduler": {"lr_scheduler_type": "cosine", "lr_scheduler_args": {"min_lr_ratio": 0.1, "num_cycles": 0.5}}},
     "sft", {"lr_scheduler": "cosine_with_min_lr", "lr_scheduler_kwargs": {"num_cycles": 0.5, "min_lr_rate": 0.1}}),
    ({"training_type": {"type": "Lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                        "lora_trainable_modules": "q_proj"}},
     "sft", {"lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj"]}}),
    ({"training_method": {"method": "sft", "train_on_inputs": True}}, "sft", {"assistant_only_loss": False}),
    ({"training_method": {"method": "dpo", "rpo_alpha": 0.5}}, "preference",
     {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}),
    ({"training_method": {"method": "dpo", "rpo_alpha": 0}}, "preference", {"loss_type": ["sigmoid"], "loss_weights": [1.0]}),
    ({"training_method": {"method": "dpo", "dpo_normalize_logratios_by_length": True}}, "preference",
     {"loss_type": ["sigmoid_norm", "sft"]}),
    ({"training_method": {"method": "dpo", "dpo_beta": 0.3}}, "preference", {"beta": 0.3, "loss_weights": None}),
    ({"training_type": {"type": "Full"}}, "sft", {"method": "full", "merge": True}),
    ({"lora": False}, "sft", {"method": "full"}),
    ({"training_type": {"type": "Full"}, "training_method": {"method": "dpo"}}, "preference", {"method": "full"}),
    ({"training_type": {"type": "Lora"}}, "sft", {"method": "lora"}),
])
def test_each_together_field_reaches_the_jobs_recipe(body, stage, expected):
    """What the stage runs with is the recipe's section, recorded as the stage manifest's settings."""
    parsed = workspace.check(recipe_for(spec(**body))).model_dump()[stage]
    for key, value in expected.items():
        if isinstance(value, dict) and key == "lora":
            assert {k: parsed["lora"][k] for k in value} == value
        else:
            assert parsed[key] == value, key


def test_the_same_seed_given_as_seed_and_random_seed_is_not_a_contradiction():
    spec(random_seed=5, seed=5)  # no 400: only different values contradict (tested above)


def test_a_dpo_job_recipe_passes_sft_through_and_trains_the_preference_stage():
    parsed = workspace.check(recipe_for(spec(method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25}}})))
    assert not parsed.sft.enabled and parsed.preference.enabled and parsed.preference.beta == 0.25
    assert [d.path for d in parsed.data.preference] == ["/ws/files/file-1.jsonl"] and parsed.data.sft == []
    with_validation = workspace.check(recipe_for(spec(method={"type": "dpo"}), validation_file="/ws/files/file-2.jsonl"))
    assert [d.path for d in with_validation.data.preference_validation] == ["/ws/files/file-2.jsonl"]
    assert with_validation.data.sft_validation == [] and with_validation.data.validation_fraction == 0


def test_a_bad_override_or_value_is_a_lathe_error_naming_the_key():
    with pytest.raises(LatheError, match="sft.learnin_rate"):
        recipe_for(spec(), overrides=["sft.learnin_rate=1"])


def test_checkpoints_are_spread_over_the_planned_steps():
    recipe = recipe_for(spec(n_epochs=2, batch_size=4))
    assert workspace.save_steps(recipe, train_rows=10, n_checkpoints=1) == 6  # ceil(10/4)=3 steps x 2 epochs
    assert workspace.save_steps(recipe, train_rows=10, n_checkpoints=3) == 2
    assert workspace.save_steps(recipe_for(spec(), overrides=["sft.max_steps=5"]), 1000, 2) == 3


def test_names():
    assert workspace.fine_tuned_model_name("tiny", "support", "ftjob-0123456789abcdef") == "tiny:ft-support-89abcdef"
    assert workspace.fine_tuned_model_name("tiny", None, "ftjob-0123456789abcdef") == "tiny:ft-89abcdef"
    assert workspace.registry_name("org/model:ft-a-1") == "org-model-ft-a-1"
    assert workspace.file_name("file-1", "data.PARQUET") == "file-1.parquet"
    assert workspace.file_name("file-1", "upload") == "file-1.jsonl"


def test_only_finished_checkpoints_count(tmp_path):
    root = tmp_path / ".lathe/checkpoints/artifacts/sft-0123"

    def checkpoint(step, state_step=None, weights=True, state=True):
        folder = root / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if weights:
            (folder / "adapter_model.safetensors").write_bytes(b"x")
        if state:
            history = [{"step": 1, "loss": 2.0}, {"step": step, "loss": 1.5, "mean_token_accuracy": 0.7},
                       {"step": step + 1, "loss": 0.1}]
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": state_step or step,
                                                                   "log_history": history}))

    checkpoint(2)
    checkpoint(4)
    checkpoint(6, state=False)  # being written
    checkpoint(8, state_step=7)  # a mismatched (half-written) one
    checkpoint(10, weights=False)
    found = progress.finished_checkpoints(tmp_path, "sft")
    assert [c.step for c in found] == [2, 4]
    assert found[-1].metrics == {"train_loss": 1.5, "train_mean_token_accuracy": 0.7}
    assert progress.finished_checkpoints(tmp_path, "preference") == []


def test_a_stage_failure_is_reported_by_its_own_error_event_else_with_its_last_lines():
    assert StageExit(2, "sft.lora.r must be > 0", ["noise"]).why() == "sft.lora.r must be > 0"
    assert StageExit(-9, None, ["a", "b"]).why() == "the stage reported no error (killed?); its last output: a | b"


def test_the_checkpoint_list_follows_the_disk_and_the_events_keep_the_history(tmp_path):
    from accounts.jobs import sync_checkpoints
    from accounts.store import Store, page

    store = Store(tmp_path / "platform.db")

    def ckpt(step):
        return progress.Checkpoint("sft", step, tmp_path / f"checkpoint-{step}", {"train_loss": 1.0})

    sync_checkpoints(store, "ftjob-1", "sft", [ckpt(2), ckpt(4)])
    sync_checkpoints(store, "ftjob-1", "sft", [ckpt(4), ckpt(6)])  # the trainer rotated checkpoint-2 away
    rows, _ = page(store, "fine_tuning_checkpoints", "job_id = ?", ["ftjob-1"], None, 10)
    assert sorted(r["step"] for r in rows) == [4, 6]
    events, _ = page(store, "fine_tuning_events", "job_id = ?", ["ftjob-1"], None, 10)
    assert [e["message"] for e in reversed(events)] == [f"Checkpoint created at step {s}" for s in (2, 4, 6)]
    store.close()


def test_the_jobs_plane_is_off_unless_the_recipe_turns_it_on():
    assert not load_recipe("default").serve.fine_tuning.enabled
    recipe = load_recipe("default", ["serve.fine_tuning.enabled=true", "serve.fine_tuning.max_concurrent_jobs=2"])
    assert recipe.serve.fine_tuning.enabled and recipe.serve.fine_tuning.max_concurrent_jobs == 2


def test_a_full_job_trains_at_the_full_rate_unless_it_names_one():
    """The base recipe's learning rate is a LoRA one: a Full job that names none gets fine_tuning.full_learning_rate
    (scaled by OpenAI's multiplier); one that names a rate keeps it."""
    def sft(spec_):
        base = workspace.base_recipe("default", ROOT)
        return workspace.check(workspace.job_recipe(
            base, job_id="ftjob-abc", spec=spec_, seed=7, base_model_dir=Path("/models/base"),
            train_file="/ws/files/file-1.jsonl", validation_file=None, model_name="tiny:ft-x-abc",
            tracking_uri="sqlite:///m.db", project_root=ROOT, overrides=[], full_learning_rate=2e-5)).sft

    assert sft(spec(training_type={"type": "Full"})).learning_rate == 2e-5
    assert sft(spec(training_type={"type": "Full"}, hyperparameters={"learning_rate_multiplier": 0.5})
               ).learning_rate == pytest.approx(1e-5)
    assert sft(spec(lora=False, learning_rate=3e-6)).learning_rate == 3e-6
    assert sft(spec()).learning_rate == load_recipe("default").sft.learning_rate  # LoRA: the recipe's own


def test_a_lora_job_keeps_the_base_recipes_qlora_and_overrides_cannot_flip_the_training_type():
    base = workspace.base_recipe("default", ROOT)
    base["sft"]["method"] = "qlora"
    recipe = workspace.job_recipe(base, job_id="ftjob-abc", spec=spec(), seed=7, base_model_dir=Path("/models/base"),
                                  train_file="/ws/files/file-1.jsonl", validation_file=None, model_name="tiny:ft-x",
                                  tracking_uri="sqlite:///m.db", project_root=ROOT, overrides=[])
    assert recipe["sft"]["method"] == "qlora"  # 4-bit as the operator's base recipe asks
    with pytest.raises(LatheError, match="overrides set sft.method=lora, but this is a Full job"):
        recipe_for(spec(training_type={"type": "Full"}), overrides=["sft.method=lora"])
