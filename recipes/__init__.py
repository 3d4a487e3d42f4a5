"""Recipes: WHAT to run. The typed schema, the YAML loader, and the YAML files themselves."""

from recipes.errors import LatheError
from recipes.loader import load_recipe, apply_overrides
from recipes.schema import Recipe

__all__ = ["LatheError", "Recipe", "load_recipe", "apply_overrides"]
