"""Which template renders a conversation, and which characters of it an SFT row trains.

The model's own chat template renders every conversation, in training and in serving. Where that
template has no tool syntax (SmolLM2's ChatML ignores `tools` and `tool_calls`), tool conversations
are first rewritten into plain turns in the one call syntax of chat/tool_calls.py — the same rewrite
in training and serving, so the tuned model is asked the way it was taught.

Trained spans (the assistant turns, each through its end-of-turn token):
- the maintained path first: a template with `{% generation %}` markers (the model's own, or TRL's
  training twin of a template TRL knows: Llama 3, Qwen 2.5/3, Phi-3, gpt-oss, …) gives the spans via
  transformers' assistant masks. A twin must render exactly the text the model's own template does;
  a row where it does not is refused rather than trained on a prompt the model will never see.
- otherwise (SmolLM2 and other templates nobody has marked) by rendering prefixes: turn i is what
  `messages[:i+1]` adds to `messages[:i]` plus the generation prompt, cut after the end-of-turn
  token. A template that re-renders earlier turns differently as the conversation grows cannot be
  split this way and is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from chat.tool_calls import inline_tools


class ChatFormatError(ValueError):
    """A conversation the template cannot render or split into trained spans; the message says why."""


@dataclass(frozen=True)
class ChatFormat:
    template: str                  # the model's own template
    native_tools: bool             # the template renders tools, tool calls and tool results itself
    eos_token: str
    special_tokens: tuple[tuple[str, str], ...]
    tokenizer: object = field(repr=False, compare=False)

    @cached_property
    def training_template(self) -> str | None:
        """A twin with {% generation %} markers, when one exists (looked up on first need: it imports TRL,
        which a server answering chat requests does not need)."""
        return _training_template(self.tokenizer)

    def conversation(self, messages: list[dict], tools: list[dict] | None) -> tuple[list[dict], list[dict] | None]:
        """(messages, tools) as the template takes them."""
        if self.native_tools:
            return messages, tools or None
        return inline_tools(messages, tools), None

    def render(self, messages: list[dict], tools: list[dict] | None = None, *, template: str | None = None,
               add_generation_prompt: bool = False) -> str:
        """Render already-converted messages (see `conversation`)."""
        return self._render(messages, tools, template or self.template, add_generation_prompt)[0]

    def _render(self, messages, tools, template, add_generation_prompt, spans=False) -> tuple[str, list]:
        from jinja2 import TemplateError
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            rendered, indices = render_jinja_template(
                conversations=[messages], tools=tools, chat_template=template, return_assistant_tokens_mask=spans,
                add_generation_prompt=add_generation_prompt, **dict(self.special_tokens))
        except (TemplateError, TypeError, ValueError) as exc:
            raise ChatFormatError(f"the chat template cannot render this conversation: {exc}") from None
        return rendered[0], (indices[0] if spans else [])

    def assistant_spans(self, messages: list[dict], tools: list[dict] | None) -> tuple[str, list[tuple[int, int]]]:
        """(text, one (start, end) character span per assistant message, in order)."""
        wanted = sum(1 for m in messages if m["role"] == "assistant")
        if self.training_template is not None:
            text, spans = self._render(messages, tools, self.training_template, False, spans=True)
            own = self.render(messages, tools)
            if text != own:
                raise ChatFormatError("the training twin of the chat template renders this conversation differently "
                                      "from the model's own template; it cannot be trained as the model will see it")
            spans = [tuple(s) for s in spans]
        else:
            text = self.render(messages, tools)
            spans = self._prefix_spans(messages, tools, text)
        if len(spans) != wanted:
            raise ChatFormatError(f"the chat template marks {len(spans)} assistant spans for {wanted} assistant turns")
        return text, spans

    def _prefix_spans(self, messages, tools, text) -> list[tuple[int, int]]:
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:i], tools, add_generation_prompt=True)
            through = self.render(messages[:i + 1], tools)
            if not (through.startswith(before) and text.startswith(through)):
                raise ChatFormatError(f"the chat template renders turn {i} differently once later turns follow, so "
                                      "the assistant turns cannot be told apart; give the model a template with "
                                      "{% generation %} markers")
            end = through.rfind(self.eos_token, len(before))
            spans.append((len(before), end + len(self.eos_token) if end >= 0 else len(through)))
        return spans


def chat_format(tokenizer) -> ChatFormat:
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        raise ChatFormatError("the model has no chat template; conversations cannot be rendered (train plain `text` "
                              "rows, or give the tokenizer a chat template)")
    return _chat_format(template, tokenizer.eos_token, tuple(sorted(
        (k, v) for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str))), tokenizer)


# The probes render a few conversations; a server calls chat_format for every request.
_CACHE: dict[tuple, ChatFormat] = {}


def _chat_format(template: str, eos: str, specials: tuple, tokenizer) -> ChatFormat:
    key = (template, eos, specials)
    if key not in _CACHE:
        _CACHE[key] = ChatFormat(template=template, native_tools=_renders_tools(tokenizer), eos_token=eos,
                                 special_tokens=specials, tokenizer=tokenizer)
    return _CACHE[key]


def _training_template(tokenizer) -> str | None:
    """The model's own template if it is marked, TRL's twin if TRL knows the template, else None."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if has_generation_markers(template):
        return template
    try:
        return get_training_chat_template(tokenizer)
    except ValueError:  # TRL has no twin for this template
        return None


def _renders_tools(tokenizer) -> bool:
    """Whether the template shows tool definitions, calls (name and arguments) and results — TRL's
    `supports_tool_calling` check plus the definitions, without importing TRL (seconds) into a server."""
    from jinja2 import TemplateError

    call = {"type": "function", "function": {"name": "probe_name_5e1f", "arguments": {"probe_key_5e1f": "probe_val_5e1f"}}}
    tool = {"type": "function", "function": {"name": "probe_tool_5e1f", "description": "d",
                                             "parameters": {"type": "object", "properties": {}}}}
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "name": "probe_name_5e1f", "content": "probe_result_5e1f"}]
    try:
        text = tokenizer.apply_chat_template(messages, tools=[tool], tokenize=False)
    except (TemplateError, TypeError, ValueError):
        return False
    return all(s in text for s in ("probe_tool_5e1f", "probe_name_5e1f", "probe_key_5e1f", "probe_val_5e1f",
                                   "probe_result_5e1f"))
