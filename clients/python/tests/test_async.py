"""The asyncio client against a real adore-server (see conftest.py)."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from adore_client import (
    ADORE_SERVICE,
    AdoreError,
    AsyncClient,
    Backend,
    Client,
    Delta,
    ServerStats,
    ServingStatus,
)

PROMPTS = ["The capital of France is", "Water boils at", "def add(a, b):", "My favourite fruit is"]


def test_async_client(server, client: Client) -> None:
    expected = [client.generate(p, max_tokens=6, temperature=0) for p in PROMPTS]

    async def main() -> None:
        async with AsyncClient(server.address, timeout=60) as ac:
            await ac.wait_ready(timeout=10)
            assert await ac.health() == ServingStatus.SERVING
            assert await ac.health(ADORE_SERVICE) == ServingStatus.SERVING
            info = await ac.model_info()
            assert info.backend == Backend.CPU and info.vocab_size == 49152

            # Streaming: the deltas add up to the sync client's result.
            stream = ac.generate_stream(PROMPTS[0], max_tokens=6, temperature=0)
            deltas = [d async for d in stream]
            assert deltas and all(isinstance(d, Delta) for d in deltas)
            r = await stream.result()
            assert [t for d in deltas for t in d.token_ids] == r.token_ids == expected[0].token_ids
            assert "".join(d.text for d in deltas) == r.text == expected[0].text

            # Concurrent requests (batched on the server) give their one-at-a-time greedy outputs.
            results = await asyncio.gather(*(ac.generate(p, max_tokens=6, temperature=0) for p in PROMPTS))
            assert [x.token_ids for x in results] == [x.token_ids for x in expected]
            assert [x.text for x in results] == [x.text for x in expected]

            # Errors, from a non-streaming call and from a stream's iteration.
            with pytest.raises(AdoreError) as e:
                await ac.generate(PROMPTS[0], temperature=-1)
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.message.startswith("sampling.temperature")
            with pytest.raises(AdoreError) as e:
                async for _ in ac.generate_stream(PROMPTS[0], top_p=0.0):
                    pass
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT

            # Cancel after the first delta.
            stream = ac.generate_stream(PROMPTS[1], max_tokens=500, temperature=0)
            first = await stream.__anext__()
            assert first.token_ids
            stream.cancel()
            with pytest.raises(AdoreError) as e:
                await stream.result()
            assert e.value.code == grpc.StatusCode.CANCELLED

            s = await ac.stats()
            assert isinstance(s, ServerStats) and s.requests.ok >= 1

    asyncio.run(main())


def test_async_unreachable_server() -> None:
    async def main() -> None:
        async with AsyncClient("127.0.0.1:1", timeout=10) as ac:
            with pytest.raises(AdoreError) as e:
                await ac.generate("x", max_tokens=1)
            assert e.value.code == grpc.StatusCode.UNAVAILABLE

    asyncio.run(main())
