"""Recipe parsing, overrides and the errors a user sees."""

from pathlib import Path

import pytest
import yaml

from recipes import LatheError, load_recipe
from recipes.loader import RECIPES_DIR, apply_overrides
from recipes.schema import EMBEDDED_DEFAULT, Recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_validates(path):
    assert load_recipe(path).name == path.stem


def test_params_yaml_is_the_default_recipe():
    # params.yaml is the active recipe DVC tracks; as committed it must equal recipes/default.yaml.
    assert load_recipe(ROOT / "params.yaml") == load_recipe("default")


def test_empty_recipe_is_the_embedded_default(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    recipe = load_recipe(path)
    assert recipe.model.id == EMBEDDED_DEFAULT and recipe == Recipe()


def test_overrides_parse_values_as_yaml():
    recipe = load_recipe("default", ["sft.max_steps=7", "sft.lora.target_modules=[q_proj, v_proj]",
                                     "preference.enabled=false", "eval.suites=[{name: skills, limit: 3}]",
                                     "gate.guards=null", "gate.max_retention=null", "eval.intermediate_suites=null", "gate.required=[skills/exact_match]"])
    assert recipe.sft.max_steps == 7
    assert recipe.sft.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.preference.enabled is False
    assert recipe.eval.suites[0].limit == 3


def test_override_does_not_mutate_input():
    data = {"sft": {"max_steps": 1}}
    apply_overrides(data, ["sft.max_steps=2"])
    assert data == {"sft": {"max_steps": 1}}


def test_unknown_key_names_file_line_and_known_keys(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("name: t\nsft:\n  max_steps: 3\n  learnin_rate: 0.1\n")
    with pytest.raises(LatheError) as err:
        load_recipe(path)
    message = str(err.value)
    assert f"{path}:4" in message
    assert "sft.learnin_rate" in message and "unknown key" in message and "learning_rate" in message


def test_bad_value_names_key_and_expected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"sft": {"method": "lorax", "batch_size": 0}}))
    message = str(pytest.raises(LatheError, load_recipe, path).value)
    assert "sft.method" in message and "'lora'" in message and "lorax" in message
    assert "sft.batch_size" in message and "greater than 0" in message


def test_bad_override_is_reported_as_override():
    message = str(pytest.raises(LatheError, load_recipe, "default", ["sft.batch_size=-1"]).value)
    assert "sft.batch_size (command-line override)" in message
    assert "expected key.sub=value" in str(pytest.raises(LatheError, load_recipe, "default", ["sft.batch_size"]).value)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nsft: [unclosed\n")
    message = str(pytest.raises(LatheError, load_recipe, path).value)
    assert str(path) in message and "not valid YAML" in message


def test_unknown_recipe_lists_known_ones():
    message = str(pytest.raises(LatheError, load_recipe, "no-such-recipe").value)
    assert "default" in message and "llama-3.1-8b-lora" in message


def test_every_field_has_a_docstring():
    def walk(model, prefix=""):
        for name, field in model.model_fields.items():
            assert field.description, f"{prefix}{name} has no docstring"
            if hasattr(field.annotation, "model_fields"):
                walk(field.annotation, f"{prefix}{name}.")
    walk(Recipe)


def test_gate_metric_typo_is_caught_at_load_time():
    message = str(pytest.raises(LatheError, load_recipe, "default", ["gate.required=[skills/exact]"]).value)
    assert "gate.required: 'skills/exact_match'" not in message and "skills reports exact_match" in message
    message = str(pytest.raises(LatheError, load_recipe, "default", ["gate.primary_metric=mbpp/pass_at_1"]).value)
    assert "which eval.suites does not run" in message


def test_gate_metric_table_matches_what_eval_reports():
    from eval.suites import PRIMARY_METRIC
    from recipes.schema import SUITE_METRICS

    for suite, metric in PRIMARY_METRIC.items():
        assert metric in SUITE_METRICS[suite], suite
