"""A `Guide` as an llguidance grammar (no torch here: the routes validate guides before queueing)."""

from __future__ import annotations

from serving.engine.base import Guide


def compile_grammar(guide: Guide) -> str:
    """JSON is compact (no free whitespace): a model cannot pad its answer with endless newlines, and
    the output stays short. A schema's own `x-guidance` options still win."""
    from llguidance import LLMatcher

    if guide.kind == "json_schema":
        return LLMatcher.grammar_from_json_schema(guide.text, defaults={"whitespace_flexible": False})
    return LLMatcher.grammar_from_lark(guide.text)


def grammar_error(guide: Guide) -> str | None:
    """Why llguidance cannot use this guide (a bad schema or grammar), or None."""
    from llguidance import LLMatcher

    try:
        is_error, messages = LLMatcher.validate_grammar_with_warnings(compile_grammar(guide))
    except ValueError as exc:
        return str(exc)
    return messages[0] if is_error else None
