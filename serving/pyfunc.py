"""The MLflow pyfunc flavor of a registered Lathe model: every version's MLmodel names this module as its
`loader_module` (registry/models.py), so MLflow's own tools load and serve it:

    mlflow models serve -m models:/lathe-default@champion --env-manager local -p 5001
    curl -s localhost:5001/invocations -H 'Content-Type: application/json' \\
         -d '{"inputs": ["Say hi."], "params": {"max_new_tokens": 32}}'
    mlflow.pyfunc.load_model("models:/lathe-default@champion").predict(["Say hi."])

Input: a list of prompts (each a user message), a list of OpenAI chat conversations (`[{"role", "content"}]`),
or a DataFrame with a `messages` or `prompt` column. Output: one greedy reply per input, rendered with the
model's chat template (chat/templates.py) as `lathe serve` renders it. `--env-manager local`: the model needs
Lathe's own environment (torch CPU/GPU, transformers), which MLflow cannot rebuild from a requirements file.
`lathe serve` stays the production server (batching, streaming, tools, keys); this is MLflow's door in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_MAX_NEW_TOKENS = 128


def _load_pyfunc(data_path: str) -> "ChatModel":
    """MLflow's entry point for a `loader_module`: `data_path` is the version's model directory (a LoRA
    version's adapters are merged onto its registered base first, registry/stack.py)."""
    from registry import models, stack

    folder = Path(data_path)
    return ChatModel(models.merged(folder) if stack.is_stack(folder) else folder)


class ChatModel:
    def __init__(self, model_dir: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from chat.templates import chat_format

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self.format = chat_format(self.tokenizer)

    def predict(self, model_input: Any, params: dict | None = None) -> list[str]:
        import torch

        max_new_tokens = int((params or {}).get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        replies = []
        for conversation in _conversations(model_input):
            messages, tools = self.format.conversation(conversation, None)
            prompt = self.format.render(messages, tools, add_generation_prompt=True)
            ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
            with torch.no_grad():
                out = self.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
            replies.append(self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        return replies


def _conversations(model_input: Any) -> list[list[dict]]:
    """Each input as a chat conversation, from the shapes MLflow's scoring server hands over."""
    if hasattr(model_input, "to_dict"):  # a pandas DataFrame
        columns = list(model_input.columns)
        column = "messages" if "messages" in columns else "prompt" if "prompt" in columns else columns[0]
        model_input = list(model_input[column])
    if hasattr(model_input, "tolist"):  # `{"inputs": [...]}` arrives as a numpy array
        model_input = model_input.tolist()
    if isinstance(model_input, (str, dict)):
        model_input = [model_input]
    out = []
    for item in model_input:
        if isinstance(item, str):
            out.append([{"role": "user", "content": item}])
        elif isinstance(item, dict) and "messages" in item:
            out.append(list(item["messages"]))
        elif isinstance(item, dict) and "prompt" in item:
            out.append([{"role": "user", "content": str(item["prompt"])}])
        elif isinstance(item, (list, tuple)) and all(isinstance(m, dict) for m in item):
            out.append([dict(m) for m in item])
        else:
            raise ValueError(f"cannot read {type(item).__name__} as a prompt: give a string, a list of chat "
                             "messages, or an object with `messages` or `prompt`")
    return out
