"""The benches' own arithmetic (no timing): percentiles, serving metrics, llm-foundry's MFU formula,
the GPU bench's random tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from bench.common import percentile, summary
from bench.gpu_train import LLAMA_31_8B, llm_foundry_flops_per_batch, peak_flops
from bench.serving_client import RequestResult, metrics


@pytest.mark.parametrize("values", [[1.0], [3.0, 1.0, 2.0], list(np.random.default_rng(0).exponential(size=97))])
def test_percentiles_match_numpy(values):
    for q in (50, 90, 99):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_summary_scales_and_handles_empty():
    assert summary([0.1, 0.2, 0.3], 1000)["p50"] == pytest.approx(200.0)
    assert summary([])["n"] == 0 and summary([])["p50"] is None


def test_serving_metrics_follow_vllm_definitions():
    # ttft 0.5 s, 5 tokens over 1.3 s: TPOT = (1.3 - 0.5) / 4 = 0.2 s; ITL gaps pooled; failures counted.
    ok = RequestResult(ok=True, output_tokens=5, ttft=0.5, latency=1.3, itl=[0.2, 0.2, 0.2, 0.2])
    one_token = RequestResult(ok=True, output_tokens=1, ttft=0.4, latency=0.4)
    failed = RequestResult(ok=False, error="HTTP 503: queue_full")
    m = metrics([ok, one_token, failed], duration=2.0)
    assert (m["completed"], m["failed"], m["output_tokens"]) == (2, 1, 6)
    assert m["output_tokens_per_s"] == pytest.approx(3.0) and m["requests_per_s"] == pytest.approx(1.0)
    assert m["tpot_ms"]["n"] == 1 and m["tpot_ms"]["p50"] == pytest.approx(200.0)  # single-token request excluded
    assert m["itl_ms"]["n"] == 4 and m["ttft_ms"]["p50"] == pytest.approx(450.0)
    assert m["errors"] == ["HTTP 503: queue_full"]


def test_llm_foundry_formula_on_llama_8b():
    # 8.03e9 parameters, 2048 tokens, batch 1: (2*N*T + L*4*d*T^2) * 3, by hand.
    n, layers, d, t = 8_030_261_248, LLAMA_31_8B["num_hidden_layers"], LLAMA_31_8B["hidden_size"], 2048
    expected = (2 * n * t + layers * 2 * 2 * d * t * t) * 3
    assert llm_foundry_flops_per_batch(n, layers, d, 1, t) == expected
    assert llm_foundry_flops_per_batch(n, layers, d, 4, t) == 4 * expected


def test_peak_flops_table():
    assert peak_flops("NVIDIA H100 80GB HBM3") == pytest.approx(989.5e12)
    assert peak_flops("NVIDIA H100 PCIe") == pytest.approx(756.5e12)
    assert peak_flops("NVIDIA H200") == pytest.approx(989.5e12)
    assert peak_flops("cpu") is None


def test_random_word_tokenizer_decodes_every_id():
    from bench.gpu_serve import EOS, word_tokenizer

    tokenizer = word_tokenizer(64)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "w5 w63"}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False)
    assert 5 in ids and 63 in ids and EOS in ids
    assert tokenizer.decode([7, 8]) == "w7 w8"
