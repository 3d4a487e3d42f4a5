"""The chat format, one definition for training, evaluation and serving: how a conversation (with
tools, tool calls and tool results) becomes text and tokens, and which of those tokens are trained.

- `tool_calls`: the tool-call syntax the model writes and the server parses and constrains.
- `templates`: which chat template renders a conversation (the model's own, or the model's own
  extended with tool syntax), and its training twin with `{% generation %}` markers.
- `messages`: checks for one conversation as users write it (roles, tool calls, tool results, weights).
- `encode`: a normalised row → input_ids and labels (the trained spans), for SFT and `lathe data inspect`.
"""
