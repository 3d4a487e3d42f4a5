"""`lathe serve` passes every knob of the recipe's `serve:` to the server (one definition: ServerTuning), the
command line's host and port over them."""

from pathlib import Path

from pipelines.serve import server_settings
from recipes import load_recipe
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
