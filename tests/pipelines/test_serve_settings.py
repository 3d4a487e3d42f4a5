"""`lathe serve` passes every knob of the recipe's `serve:` to the server (one definition: ServerTuning),
`LATHE_SERVE_<KNOB>` variables over them, the command line's host and port over both."""

from pathlib import Path

import pytest

from pipelines.serve import server_settings
from recipes import LatheError, load_recipe
from recipes.serve_schema import ServerTuning


def test_every_serve_knob_reaches_the_server_and_the_command_line_wins():
    recipe = load_recipe("default", ["serve.max_batch_size=3", "serve.engine=continuous", "serve.max_n=2",
                                     "serve.device=cpu", "serve.port=9001", "serve.log_level=debug"])
    settings = server_settings(recipe, "champion", Path("/models/x"), port=9100)
    assert (settings.max_batch_size, settings.engine, settings.max_n, settings.device) == (3, "continuous", 2, "cpu")
    assert settings.port == 9100 and settings.log_level == "debug"  # --port over serve.port
    assert settings.model_ref == "champion" and settings.model_name == recipe.registry.model_name
    for field in ServerTuning.model_fields:  # nothing of serve: is dropped on the way
        if field != "port":
            assert getattr(settings, field) == getattr(recipe.serve, field), field
    assert server_settings(recipe, "/models/x", Path("/models/x")).model_ref is None  # a folder is not followed


def test_the_environment_sits_between_the_recipe_and_the_command_line(monkeypatch):
    recipe = load_recipe("default", ["serve.max_queue=32", "serve.port=9001", "serve.torch_threads=2"])
    monkeypatch.setenv("LATHE_SERVE_MAX_QUEUE", "5")
    monkeypatch.setenv("LATHE_SERVE_PORT", "9002")
    monkeypatch.setenv("lathe_serve_torch_threads", "null")  # any case; `null` unsets an optional knob
    monkeypatch.setenv("LATHE_SERVE_SANITIZE_CONTROL_TOKENS", "false")
    settings = server_settings(recipe, "champion", Path("/models/x"))
    assert (settings.max_queue, settings.port, settings.torch_threads) == (5, 9002, None)
    assert settings.sanitize_control_tokens is False and settings.max_batch_size == recipe.serve.max_batch_size
    assert server_settings(recipe, "champion", Path("/models/x"), port=9100).port == 9100  # --port over both


def test_a_misspelt_or_bad_environment_setting_is_refused_by_name(monkeypatch):
    recipe = load_recipe("default")
    monkeypatch.setenv("LATHE_SERVE_MAX_QUEU", "5")
    with pytest.raises(LatheError, match="LATHE_SERVE_MAX_QUEU set no server setting.*LATHE_SERVE_MAX_QUEUE"):
        server_settings(recipe, "champion", Path("/models/x"))
    monkeypatch.delenv("LATHE_SERVE_MAX_QUEU")
    monkeypatch.setenv("LATHE_SERVE_MAX_QUEUE", "0")
    with pytest.raises(LatheError, match="environment LATHE_SERVE_MAX_QUEUE='0': Input should be greater than"):
        server_settings(recipe, "champion", Path("/models/x"))
    monkeypatch.setenv("LATHE_SERVE_MAX_QUEUE", "4")
    with pytest.raises(LatheError, match="command line --port: Input should be less than"):
        server_settings(recipe, "champion", Path("/models/x"), port=70000)
