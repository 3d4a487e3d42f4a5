"""Request fields -> engine SamplingParams, with the checks that need the model or the settings.

Pydantic already enforces ranges (protocol.py); this adds what it cannot know: the context length,
the server's limits, what the chosen engine can do, and the OpenAI options this server does not
implement (refused with a 400 naming the field, never silently ignored).
"""

from __future__ import annotations

from serving.engine import Engine, Guide, SamplingParams
from serving.errors import invalid_request
from serving.protocol import SamplingRequest
from serving.settings import ServerSettings

GREEDY_BELOW = 1e-5  # a temperature below this is greedy decoding (vLLM's _SAMPLING_EPS)


def check_supported(request: SamplingRequest, settings: ServerSettings) -> None:
    if request.logit_bias:
        raise invalid_request("logit_bias is not supported by this server.", "logit_bias")
    if request.n > settings.max_n:
        raise invalid_request(f"n must be at most {settings.max_n} (server limit max_n).", "n")
    stops = request.stop_strings()
    if len(stops) > settings.max_stop_strings:
        raise invalid_request(f"At most {settings.max_stop_strings} stop strings are allowed; got {len(stops)}.",
                              "stop")
    if request.stream_options is not None and not request.stream:
        raise invalid_request("stream_options is only allowed when stream is true.", "stream_options")


def check_logprobs(count: int | None, param: str, settings: ServerSettings) -> None:
    if count is not None and count > settings.max_logprobs:
        raise invalid_request(f"{param} must be at most {settings.max_logprobs}.", param)


def check_engine_supports(engine: Engine, params: SamplingParams, settings: ServerSettings, *,
                          prompt_logprobs: bool = False, guide_param: str = "response_format") -> None:
    """A 400 naming the field when the configured engine cannot honour it (rather than ignoring it)."""
    used = {
        "seed": params.seed is not None, "min_p": bool(params.min_p),
        "repetition_penalty": params.repetition_penalty != 1.0, "presence_penalty": bool(params.presence_penalty),
        "frequency_penalty": bool(params.frequency_penalty), "min_tokens": bool(params.min_tokens),
        "logprobs": params.logprobs is not None, "top_logprobs": bool(params.logprobs),
        "prompt_logprobs": prompt_logprobs,
        "guide": params.guide is not None, "adapter": params.adapter is not None,
    }
    for feature, asked in used.items():
        if asked and feature in engine.unsupported:
            param = {"guide": guide_param, "prompt_logprobs": "echo", "top_logprobs": "logprobs",
                     "adapter": "model"}.get(feature, feature)
            raise invalid_request(f"{param}: not supported by the '{settings.engine}' engine this server runs "
                                  "(start it with engine='transformers' for every option).", param)


def sampling_params(request: SamplingRequest, *, max_tokens: int | None, prompt_len: int, prompt_param: str,
                    max_model_len: int, logprobs: int | None, guide: Guide | None = None,
                    adapter: str | None = None) -> SamplingParams:
    """Resolve defaults (OpenAI's: temperature 1, top_p 1) and check the context budget."""
    room = max_model_len - prompt_len
    truncate = request.context_length_exceeded_behavior == "truncate"
    if (max_tokens is None or truncate) and room <= 0:
        raise _too_long(max_model_len, f"the {prompt_param} alone have {prompt_len} tokens, leaving no room "
                        "for a completion", prompt_param)
    if max_tokens is None:  # as vLLM: whatever room the context leaves
        max_tokens = room
    elif max_tokens > room:
        if not truncate:
            raise _too_long(max_model_len, f"you requested {prompt_len + max_tokens} tokens ({prompt_len} in the "
                            f"{prompt_param}, {max_tokens} in the completion)", prompt_param)
        max_tokens = room  # Together's 'truncate': the completion gets what the context leaves
    if request.min_tokens and guide is not None:  # the grammar may only allow EOS while min_tokens forbids it
        raise invalid_request("min_tokens cannot be combined with response_format or tools.", "min_tokens")
    if request.min_tokens > max_tokens:
        raise invalid_request(f"min_tokens ({request.min_tokens}) must not exceed max_tokens ({max_tokens}).",
                              "min_tokens")
    temperature = 1.0 if request.temperature is None else request.temperature
    if temperature < GREEDY_BELOW:  # dividing logits by ~0 (or a float32 zero) makes inf/NaN probabilities
        temperature = 0.0
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        top_k=0 if request.top_k in (None, -1) else request.top_k,
        min_p=request.min_p or 0.0,
        repetition_penalty=1.0 if request.repetition_penalty is None else request.repetition_penalty,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        min_tokens=request.min_tokens,
        seed=request.seed,
        logprobs=logprobs,
        guide=guide,
        adapter=adapter,
    )


def _too_long(max_model_len: int, detail: str, param: str) -> Exception:
    return invalid_request(f"This model's maximum context length is {max_model_len} tokens. However, {detail}. "
                           f"Please reduce the length of the {param} or the completion.",
                           param, "context_length_exceeded")
