"""The synchronous client against a real adore-server (see conftest.py)."""
from __future__ import annotations

import re
import time

import grpc
import pytest

from adore_client import (
    ADORE_SERVICE,
    AdoreError,
    AdoreStats,
    Backend,
    ChatMessage,
    Client,
    Delta,
    FinishReason,
    GenerateResult,
    ModelInfo,
    Policy,
    ServerStats,
    ServingStatus,
    build_request,
)

PROMPT = "The capital of France is"
# ~40 tokens: longer than the smallest kv_budget (21 with ADORE), so a releasing policy has to release.
LONG_PROMPT = ("It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith, his "
               "chin nuzzled into his breast in an effort to escape the vile wind, slipped quickly through.")


def test_health_and_model_info(client: Client) -> None:
    assert client.health() == ServingStatus.SERVING
    assert client.health(ADORE_SERVICE) == ServingStatus.SERVING
    info = client.model_info()
    assert isinstance(info, ModelInfo)
    assert info.architecture == "llama"
    assert (info.vocab_size, info.num_layers, info.hidden_size) == (49152, 30, 576)
    assert info.context_length >= 2048
    assert info.backend == Backend.CPU
    assert info.tensor_parallel_size == 1
    assert info.chat_template_available
    assert info.default_max_tokens == 16  # --default_max_tokens of the test server
    assert info.default_release.policy == Policy.FULL
    assert set(info.available_policies) >= {Policy.FULL, Policy.WINDOW, Policy.HEAVY_HITTER, Policy.ADORE}
    # The budget every available policy accepts: ADORE's protected set (4 sinks + 16 recent) + the new token.
    assert (info.min_kv_budget, info.max_rebuild) == (21, 64)


def test_unknown_health_service_raises_not_found(client: Client) -> None:
    with pytest.raises(AdoreError) as e:
        client.health("no.such.Service")
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_streaming_greedy_equals_non_streaming(client: Client) -> None:
    stream = client.generate_stream(PROMPT, max_tokens=10, temperature=0, request_id="sdk-test-1")
    deltas = list(stream)
    streamed = stream.result()
    assert deltas and all(isinstance(d, Delta) and d.token_ids for d in deltas)
    tokens = [t for d in deltas for t in d.token_ids]
    text = "".join(d.text for d in deltas)
    assert (streamed.token_ids, streamed.text) == (tokens, text)
    assert streamed.request_id == stream.request_id == "sdk-test-1"

    r = client.generate(PROMPT, max_tokens=10, temperature=0)
    assert isinstance(r, GenerateResult)
    assert r.token_ids == tokens
    assert r.text == text
    assert r.finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
    if r.finish_reason == FinishReason.LENGTH:
        assert len(r.token_ids) == 10
    assert r.usage.completion_tokens == len(r.token_ids)
    assert r.usage.prompt_tokens > 0
    assert isinstance(r.adore, AdoreStats) and r.adore.policy == Policy.FULL and r.adore.kv_budget == 0
    assert r.timing.total_ms >= r.timing.ttft_ms > 0
    assert "Paris" in r.text


def test_max_tokens_default_and_length(client: Client) -> None:
    r = client.generate("Count: one, two, three, four,", temperature=0)
    assert r.usage.completion_tokens <= 16  # the server's default_max_tokens
    r = client.generate("Count: one, two, three, four,", max_tokens=3, temperature=0)
    assert r.finish_reason == FinishReason.LENGTH and len(r.token_ids) == 3


def test_seeded_sampling_repeats(client: Client) -> None:
    kw = dict(max_tokens=8, temperature=1.0, top_k=50, top_p=0.95, seed=1234)
    a = client.generate("Once upon a time", **kw)
    b = client.generate("Once upon a time", **kw)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.seed == 1234
    stream = client.generate_stream("Once upon a time", **kw)
    assert [t for d in stream for t in d.token_ids] == a.token_ids


def test_token_ids_and_chat_inputs(client: Client) -> None:
    first = client.generate(PROMPT, max_tokens=6, temperature=0)
    assert first.token_ids
    r = client.generate(token_ids=first.token_ids, max_tokens=4, temperature=0)
    assert r.usage.prompt_tokens == len(first.token_ids)
    assert 1 <= r.usage.completion_tokens <= 4

    as_dicts = client.generate(messages=[{"role": "user", "content": "What is the capital of France?"}],
                               max_tokens=8, temperature=0)
    as_objects = client.generate(messages=[ChatMessage("user", "What is the capital of France?")],
                                 max_tokens=8, temperature=0)
    as_pairs = client.generate(messages=[("user", "What is the capital of France?")], max_tokens=8, temperature=0)
    assert as_dicts.token_ids == as_objects.token_ids == as_pairs.token_ids
    assert as_dicts.usage.prompt_tokens > 10  # the template's system turn and tags
    assert "Paris" in as_dicts.text


def test_stop_string(client: Client) -> None:
    full = client.generate(PROMPT, max_tokens=12, temperature=0)
    words = re.findall(r"[A-Za-z]{3,}", full.text)
    assert len(words) >= 2, full.text
    stop = words[1]
    r = client.generate(PROMPT, max_tokens=12, temperature=0, stop=[stop])
    assert r.finish_reason == FinishReason.STOP
    assert r.text == full.text[: full.text.index(stop)]
    assert r.matched_stop == stop
    assert full.matched_stop == ""


def test_release_policies_report_their_stats(client: Client) -> None:
    r = client.generate(LONG_PROMPT, max_tokens=4, temperature=0, policy="window", kv_budget=16)
    assert r.adore.policy == Policy.WINDOW
    assert r.adore.kv_budget == 16
    assert r.adore.tokens_released > 0
    assert r.adore.kv_slots_in_use <= 16
    r = client.generate(LONG_PROMPT, max_tokens=4, temperature=0, policy=Policy.ADORE, kv_budget=24, rebuild=2)
    assert (r.adore.policy, r.adore.kv_budget, r.adore.rebuild) == (Policy.ADORE, 24, 2)
    assert r.adore.tokens_released > 0
    # ModelInfo.min_kv_budget works for every policy, ADORE included; one less is refused up front.
    low = client.model_info().min_kv_budget
    for policy in (Policy.WINDOW, Policy.HEAVY_HITTER, Policy.ADORE):
        r = client.generate(LONG_PROMPT, max_tokens=2, temperature=0, policy=policy, kv_budget=low)
        assert r.adore.kv_budget == low and r.adore.tokens_released > 0 and r.adore.kv_slots_in_use <= low
    with pytest.raises(AdoreError) as e:
        client.generate(LONG_PROMPT, max_tokens=2, policy=Policy.ADORE, kv_budget=low - 1)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.message.startswith(f"release.kv_budget: must be in [{low}, "), e.value.message


def test_unset_fields_take_the_documented_defaults(client: Client) -> None:
    # temperature unset: 0, greedy.
    greedy = client.generate(LONG_PROMPT, max_tokens=8, temperature=0)
    assert client.generate(LONG_PROMPT, max_tokens=8).token_ids == greedy.token_ids
    # seed unset: the server draws one, reports it, and it reproduces the sampled tokens.
    a = client.generate(LONG_PROMPT, max_tokens=8, temperature=1.0)
    b = client.generate(LONG_PROMPT, max_tokens=8, temperature=1.0)
    assert a.seed != 0 and a.seed != b.seed
    again = client.generate(LONG_PROMPT, max_tokens=8, temperature=1.0, seed=a.seed)
    assert (again.seed, again.token_ids) == (a.seed, a.token_ids)
    # request_id empty: the server assigns a random 32-digit hex one, the same in every message.
    stream = client.generate_stream(PROMPT, max_tokens=4, temperature=0)
    list(stream)
    assert re.fullmatch(r"[0-9a-f]{32}", stream.request_id), stream.request_id
    assert stream.result().request_id == stream.request_id
    other = client.generate(PROMPT, max_tokens=1, temperature=0)
    assert re.fullmatch(r"[0-9a-f]{32}", other.request_id) and other.request_id != stream.request_id
    # timing: the queue time is part of the time to the first token.
    assert 0 < greedy.timing.queue_ms <= greedy.timing.ttft_ms <= greedy.timing.total_ms


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(prompt=PROMPT, temperature=-1.0), "sampling.temperature"),
        (dict(prompt=PROMPT, temperature=101.0), "sampling.temperature"),
        (dict(prompt=PROMPT, top_k=49153), "sampling.top_k"),
        (dict(prompt=PROMPT, top_p=1.5), "sampling.top_p"),
        (dict(prompt=PROMPT, max_tokens=0), "sampling.max_tokens"),
        (dict(prompt=PROMPT, max_tokens=10**6), "sampling.max_tokens"),
        (dict(prompt=PROMPT, stop=["a", ""]), "sampling.stop[1]"),
        (dict(prompt=PROMPT, stop=[str(i) for i in range(9)]), "sampling.stop"),
        (dict(prompt=""), "text"),
        (dict(max_tokens=4), "prompt"),
        (dict(token_ids=[]), "token_ids.ids"),
        (dict(token_ids=[1, -5]), "token_ids.ids[1]"),
        (dict(token_ids=[42] * 8192), "token_ids.ids"),
        (dict(prompt=PROMPT, policy="window", kv_budget=3), "release.kv_budget"),
        (dict(prompt=PROMPT, policy="full", kv_budget=64), "release.kv_budget"),
        (dict(prompt=PROMPT, policy="adore", kv_budget=64, rebuild=1000), "release.rebuild"),
        (dict(prompt=PROMPT, policy="window", kv_budget=64, rebuild=2), "release.rebuild"),
        (dict(prompt=PROMPT, policy=99), "release.policy"),
        (dict(messages=[("robot", "hi")]), "chat.messages[0].role"),
        (dict(messages=[("user", "hi")] * 257), "chat.messages"),
        (dict(prompt=PROMPT, request_id="has space"), "request_id"),
        (dict(prompt=PROMPT, request_id="x" * 129), "request_id"),
        # Several wrong fields: the first in field-number order is named.
        (dict(prompt=PROMPT, max_tokens=0, temperature=-1.0), "sampling.max_tokens"),
        (dict(prompt=PROMPT, temperature=-1.0, policy=99), "sampling.temperature"),
        (dict(prompt=PROMPT, policy="window", kv_budget=3, request_id="has space"), "release.kv_budget"),
    ],
)
def test_invalid_arguments_raise_with_the_code_and_field(client: Client, kwargs: dict, field: str) -> None:
    with pytest.raises(AdoreError) as e:
        client.generate(**kwargs)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT, e.value
    assert e.value.code_name == "INVALID_ARGUMENT"
    # The message begins with the field's path as adore.proto writes it.
    assert e.value.message.startswith(field + ": "), e.value.message
    assert str(e.value).startswith("INVALID_ARGUMENT: ")


def test_error_message_names_the_field_first(client: Client) -> None:
    with pytest.raises(AdoreError) as e:
        client.generate(PROMPT, temperature=-1)
    assert e.value.message.startswith("sampling.temperature"), e.value.message


def test_streaming_error_raises_from_the_iteration(client: Client) -> None:
    stream = client.generate_stream(PROMPT, top_p=0.0)
    with pytest.raises(AdoreError) as e:
        next(iter(stream))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(AdoreError):  # the same error again, also from result()
        stream.result()


def test_client_side_argument_errors() -> None:
    with pytest.raises(ValueError):
        build_request("x", token_ids=[1, 2])
    with pytest.raises(ValueError):
        build_request("x", policy="no-such-policy")
    with pytest.raises(TypeError):
        build_request([1, 2, 3])  # type: ignore[arg-type]
    req = build_request("x")
    assert not req.sampling.HasField("temperature") and not req.release.HasField("kv_budget")
    assert req.release.policy == 0  # unset: the server's default
    req = build_request("x", policy="heavy-hitter", temperature=0, seed=7, stop="END")
    assert req.release.policy == Policy.HEAVY_HITTER
    assert req.sampling.HasField("temperature") and req.sampling.temperature == 0
    assert list(req.sampling.stop) == ["END"] and req.sampling.seed == 7


def test_cancel_ends_the_request_on_the_server(client: Client) -> None:
    before = client.stats().requests.cancelled
    stream = client.generate_stream(PROMPT, max_tokens=500, temperature=0)
    first = next(stream)
    assert first.token_ids
    stream.cancel()
    with pytest.raises(AdoreError) as e:
        for _ in stream:
            pass
    assert e.value.code == grpc.StatusCode.CANCELLED
    deadline = time.monotonic() + 10
    while client.stats().requests.cancelled == before and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = client.stats()
    assert stats.requests.cancelled == before + 1
    assert stats.active_requests == 0


def test_stats(client: Client) -> None:
    client.generate(PROMPT, max_tokens=2, temperature=0)
    s = client.stats()
    assert isinstance(s, ServerStats)
    assert s.uptime_s > 0
    assert s.requests.ok >= 1
    assert s.completion_tokens_total >= 1 and s.prompt_tokens_total >= 1
    assert s.kv_slots_free > 0
    assert len(s.workers) == 1 and s.workers[0].rank == 0 and s.workers[0].healthy


def test_unreachable_server_raises_unavailable() -> None:
    with Client("127.0.0.1:1", timeout=10) as c:
        with pytest.raises(AdoreError) as e:
            c.generate(PROMPT, max_tokens=1)
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(AdoreError) as e:
            c.wait_ready(timeout=0.5)
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
