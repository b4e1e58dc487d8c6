"""The SDK and the CLI against an adore-server with TLS and a bearer token (conftest.py's secure_server)."""
from __future__ import annotations

import asyncio
import subprocess

import grpc
import pytest

from adore_client import ADORE_SERVICE, AdoreError, AsyncClient, Client, ServingStatus

PROMPT = "The capital of France is"


def test_tls_client_with_the_token_generates(secure_server) -> None:
    with Client(secure_server.address, timeout=60, root_certificates=secure_server.ca,
                token=secure_server.token) as c:
        r = c.generate(PROMPT, max_tokens=3)
        assert r.usage.completion_tokens == 3 and r.text
        assert "".join(d.text for d in c.generate_stream(PROMPT, max_tokens=3)) == r.text
        assert c.model_info().vocab_size == 49152
        assert c.stats().requests.ok >= 2


def test_missing_or_wrong_token_is_unauthenticated_but_health_is_open(secure_server) -> None:
    for token in (None, "wrong-token"):
        with Client(secure_server.address, timeout=30, root_certificates=secure_server.ca, token=token) as c:
            assert c.health() == ServingStatus.SERVING
            assert c.health(ADORE_SERVICE) == ServingStatus.SERVING
            for call in (lambda: c.generate(PROMPT, max_tokens=1), c.model_info, c.stats):
                with pytest.raises(AdoreError) as e:
                    call()
                assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
                assert "authorization" in e.value.message


def test_plaintext_client_cannot_reach_a_tls_server(secure_server) -> None:
    with Client(secure_server.address, timeout=5, token=secure_server.token) as c:
        with pytest.raises(AdoreError) as e:
            c.model_info()
        assert e.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_async_client_with_tls_and_token(secure_server) -> None:
    async def main() -> None:
        async with AsyncClient(secure_server.address, timeout=60, root_certificates=secure_server.ca,
                               token=secure_server.token) as c:
            r = await c.generate(PROMPT, max_tokens=2)
            assert r.usage.completion_tokens == 2
        async with AsyncClient(secure_server.address, timeout=30, root_certificates=secure_server.ca) as c:
            assert await c.health() == ServingStatus.SERVING
            with pytest.raises(AdoreError) as e:
                await c.model_info()
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(main())


def test_cli_token_file_and_tls_ca(adore_cmd, secure_server) -> None:
    base = [*adore_cmd, "--server", secure_server.address, "--tls-ca", secure_server.ca_file]
    r = subprocess.run([*base, "--token-file", secure_server.token_file, "generate", PROMPT, "-n", "3"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    r = subprocess.run([*base, "generate", PROMPT, "-n", "3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr
    r = subprocess.run([*base, "health"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "SERVING\n"), r.stderr
    r = subprocess.run([*base, "--token-file", "/nonexistent/token", "health"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "/nonexistent/token" in r.stderr
