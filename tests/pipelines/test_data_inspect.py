"""Users' data trained as they wrote it: every assistant turn of a multi-turn transcript, tool calls
and weights from OpenAI's format, OpenAI DPO files — checked through `lathe data inspect`, which shows
the SFT stage's own encoding, against spans worked out here from the rows themselves."""

from __future__ import annotations

import gzip
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.data import run_data
from pipelines.manifest import write_manifest
from recipes import load_recipe
from tests.pipelines.test_formats import OPENAI_CHAT, OPENAI_DPO
from tests.tiny_model import SMOLLM2_TEMPLATE

PLAIN = ["data.skills.enabled=false", "data.replay.enabled=false", "data.validation_fraction=0",
         "data.on_bad_row=skip", "sft.max_seq_length=4096", "sft.packing=false"]


@pytest.fixture(scope="module")
def smol_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with SmolLM2's own chat template: no generation markers, no tool syntax."""
    import shutil

    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("smol") / "model"
    shutil.copytree(tiny_model_dir, out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = SMOLLM2_TEMPLATE
    tok.save_pretrained(out)
    return out


def project(tmp_path: Path, model_dir: Path, overrides: list[str]) -> Path:
    recipe = load_recipe("default", PLAIN + overrides)
    (tmp_path / "artifacts" / "base").mkdir(parents=True)
    write_manifest(tmp_path / "artifacts" / "base", stage="base", inputs={}, settings={},
                   outputs={"model_dir": str(model_dir)})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    run_data(recipe, tmp_path / "artifacts")
    return tmp_path


def inspect_json(cwd: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "data", "inspect", "--json"], cwd=cwd,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def assistant_turns(transcript: str) -> list[str]:
    """Independently of pipelines/formats.py: the assistant turns of an hh-rlhf transcript."""
    parts = re.split(r"\n\n(Human|Assistant): ?", transcript)
    return [parts[i + 1].strip() for i in range(1, len(parts) - 1, 2) if parts[i] == "Assistant"]


def test_a_multi_turn_transcript_trains_every_assistant_turn_and_nothing_else(tmp_path, smol_model_dir, shared_data):
    path = shared_data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
    cwd = project(tmp_path, smol_model_dir, [f"data.sft=[{{path: {path}, format: hh_rlhf, max_rows: 12}}]"])
    report = inspect_json(cwd)
    kept = [json.loads(line) for line in (cwd / "artifacts" / "data" / "sft_train.jsonl").read_text().splitlines()]
    by_first_user = {row["messages"][0]["content"]: row for row in kept}
    transcripts = [json.loads(line)["chosen"] for line in gzip.open(path, "rt")]
    multi = 0
    for row, shown in zip(kept, report["rows"]):
        transcript = next(t for t in transcripts if t.split("\n\nAssistant:")[0].endswith(row["messages"][0]["content"]))
        expected = [turn + "<|im_end|>" for turn in assistant_turns(transcript)]
        assert shown["trained"] == expected, transcript[:200]
        multi += len(expected) > 1
    assert multi >= 6 and len(by_first_user) == report["totals"]["rows"] == 12
    assert report["totals"]["trained_tokens_cut"] == 0


def test_openai_chat_with_tools_and_weights_and_an_openai_dpo_file_train_end_to_end(tmp_path, smol_model_dir):
    from pipelines.inspect_data import inspect_split, render_html
    from pipelines.manifest import read_manifest
    from pipelines.preference import run_preference
    from pipelines.sft import run_sft

    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(OPENAI_CHAT) for _ in range(4)) + "\n")
    (tmp_path / "dpo.jsonl").write_text("\n".join(json.dumps(OPENAI_DPO) for _ in range(4)) + "\n")
    overrides = [f"data.sft=[{{path: {tmp_path / 'chat.jsonl'}}}]", f"data.preference=[{{path: {tmp_path / 'dpo.jsonl'}}}]",
                 "data.dedupe=false", "sft.max_steps=2", "sft.batch_size=2", "sft.logging_steps=1",
                 "preference.max_steps=2", "preference.batch_size=2", "preference.logging_steps=1"]
    cwd = project(tmp_path, smol_model_dir, overrides)
    recipe = load_recipe(cwd / "params.yaml")
    report = inspect_split(recipe, root=cwd / "artifacts")
    call = '<tool_call>{"name":"get_current_weather","arguments":{"location":"San Francisco, USA","format":"celsius"}}</tool_call>'
    assert report["rows"][0]["trained"] == [call + "<|im_end|>", "I can only see the weather now.<|im_end|>"]
    # the tool result and the weight-0 answer are rendered (the model reads them) but not trained
    text = "".join(piece for piece, _ in report["rows"][0]["pieces"])
    assert "<tool_response>\n21.0\n</tool_response>" in text and "It is 21 degrees celsius" in text
    assert '"name": "get_current_weather"' in text  # the tool's definition, in the system turn
    page = render_html(report, 1)  # the browser view marks the same tokens
    rows_html = page.split("</p>", 1)[1]  # after the legend
    trained = "".join(html.unescape(t) for t in re.findall(r"<span class=trained>(.*?)</span>", rows_html, re.S))
    assert trained == "".join(report["rows"][0]["trained"])

    run_sft(recipe, cwd / "artifacts")
    run_preference(recipe, cwd / "artifacts")
    for stage in ("sft", "preference"):
        history = json.loads((cwd / "artifacts" / stage / "log_history.json").read_text())
        assert len(history) == 2 and all(row["loss"] == row["loss"] for row in history)  # ran, not NaN
    assert read_manifest("sft", cwd / "artifacts")["metrics"]["data_trained_tokens_cut"] == 0
