"""The asyncio client of adore-server (grpc.aio)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any, Optional, Union

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ._pb import adore_pb2 as pb
from ._pb import adore_pb2_grpc as pb_grpc
from .client import ADORE_SERVICE, DEFAULT_SERVER, _StreamState, auth_metadata
from .errors import AdoreError
from .types import (
    ChatMessageLike,
    Delta,
    GenerateResult,
    ModelInfo,
    Policy,
    ServerStats,
    ServingStatus,
    _enum,
    build_request,
    model_info_from_pb,
    server_stats_from_pb,
)


class AsyncGenerateStream:
    """A running Generate call: `async for delta in stream`, then `await stream.result()`. A failed call
    raises AdoreError from the iteration (or from `result()`); `cancel()` or leaving an `async with`
    block early ends the request on the server."""

    def __init__(self, call: Any):
        self._call = call
        self._state = _StreamState()
        self._cancelled = False  # cancel() was called

    @property
    def request_id(self) -> str:
        return self._state.request_id

    def __aiter__(self) -> "AsyncGenerateStream":
        return self

    async def __anext__(self) -> Delta:
        st = self._state
        while True:
            if st.ended:
                if st.error is not None:
                    raise st.error
                raise StopAsyncIteration
            try:
                msg = await self._call.read()
            except grpc.RpcError as e:  # grpc.aio.AioRpcError
                raise st.fail(AdoreError.from_rpc_error(e)) from None
            except asyncio.CancelledError:
                # grpc.aio raises CancelledError from a call cancelled locally: ours (cancel()) is the call's
                # outcome; otherwise the task awaiting us is being cancelled, which ends the call too.
                if self._cancelled:
                    raise st.fail(AdoreError(grpc.StatusCode.CANCELLED, "cancelled by the client")) from None
                self._call.cancel()
                raise
            if msg is grpc.aio.EOF:
                try:
                    code = await self._call.code()
                    details = await self._call.details()
                except grpc.RpcError as e:
                    raise st.fail(AdoreError.from_rpc_error(e)) from None
                if code != grpc.StatusCode.OK:
                    raise st.fail(AdoreError(code, details or ""))
                st.finish()
                raise StopAsyncIteration
            delta = st.take(msg)
            if delta is not None:
                return delta

    async def result(self) -> GenerateResult:
        async for _ in self:
            pass
        assert self._state.result is not None
        return self._state.result

    def cancel(self) -> None:
        """Cancels the call if it is still running (the server frees the request's KV slots); reading on
        raises AdoreError with CANCELLED."""
        if not self._state.ended:
            self._cancelled = True
            self._call.cancel()

    async def __aenter__(self) -> "AsyncGenerateStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.cancel()


class AsyncClient:
    """asyncio client of the adore.v1.Adore API (the same calls as Client, awaitable).

        async with AsyncClient("127.0.0.1:50051") as c:
            async for delta in c.generate_stream("Once upon a time", max_tokens=32):
                print(delta.text, end="", flush=True)
            r = await c.generate("The capital of France is", max_tokens=8)

    Make it inside the running event loop (grpc.aio channels belong to one loop). The arguments are
    Client's (`token`, `tls`, `root_certificates` for a secured server).
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        timeout: Optional[float] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        options: Optional[Sequence[tuple[str, Any]]] = None,
        channel: Optional[grpc.aio.Channel] = None,
        token: Optional[str] = None,
        tls: bool = False,
        root_certificates: Optional[bytes] = None,
    ):
        self.server = server
        self.timeout = timeout
        self._metadata = auth_metadata(token)
        if credentials is None and (tls or root_certificates is not None):
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        if channel is None:
            opts = list(options or [])
            if credentials is not None:
                channel = grpc.aio.secure_channel(server, credentials, options=opts)
            else:
                channel = grpc.aio.insecure_channel(server, options=opts)
            self._owns_channel = True
        else:
            self._owns_channel = False
        self._channel = channel
        self._stub = pb_grpc.AdoreStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _unary_timeout(self, timeout: Optional[float]) -> float:
        if timeout is not None:
            return timeout
        return self.timeout if self.timeout is not None else 30.0

    def generate_stream(
        self,
        prompt: Optional[str] = None,
        *,
        token_ids: Optional[Iterable[int]] = None,
        messages: Optional[Iterable[ChatMessageLike]] = None,
        max_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Optional[Union[str, Iterable[str]]] = None,
        policy: Optional[Union[Policy, int, str]] = None,
        kv_budget: Optional[int] = None,
        rebuild: Optional[int] = None,
        request_id: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> AsyncGenerateStream:
        """Starts a generation (not a coroutine: iterate the returned stream with `async for`)."""
        req = build_request(prompt, token_ids=token_ids, messages=messages, max_tokens=max_tokens,
                            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop,
                            policy=policy, kv_budget=kv_budget, rebuild=rebuild, request_id=request_id)
        return self.generate_request_stream(req, timeout=timeout)

    def generate_request_stream(self, request: pb.GenerateRequest, *,
                                timeout: Optional[float] = None) -> AsyncGenerateStream:
        t = timeout if timeout is not None else self.timeout
        return AsyncGenerateStream(self._stub.Generate(request, timeout=t, metadata=self._metadata))

    async def generate(
        self,
        prompt: Optional[str] = None,
        *,
        token_ids: Optional[Iterable[int]] = None,
        messages: Optional[Iterable[ChatMessageLike]] = None,
        max_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Optional[Union[str, Iterable[str]]] = None,
        policy: Optional[Union[Policy, int, str]] = None,
        kv_budget: Optional[int] = None,
        rebuild: Optional[int] = None,
        request_id: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> GenerateResult:
        """Generates a whole completion (the same arguments as generate_stream) and returns it."""
        return await self.generate_stream(prompt, token_ids=token_ids, messages=messages, max_tokens=max_tokens,
                                    temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop,
                                    policy=policy, kv_budget=kv_budget, rebuild=rebuild, request_id=request_id,
                                    timeout=timeout).result()

    async def model_info(self, *, timeout: Optional[float] = None) -> ModelInfo:
        try:
            m = await self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self._unary_timeout(timeout),
                                         metadata=self._metadata)
        except grpc.RpcError as e:
            raise AdoreError.from_rpc_error(e) from None
        return model_info_from_pb(m)

    async def stats(self, *, timeout: Optional[float] = None) -> ServerStats:
        try:
            s = await self._stub.GetStats(pb.GetStatsRequest(), timeout=self._unary_timeout(timeout),
                                     metadata=self._metadata)
        except grpc.RpcError as e:
            raise AdoreError.from_rpc_error(e) from None
        return server_stats_from_pb(s)

    async def health(self, service: str = "", *, timeout: Optional[float] = None,
                     wait_for_ready: bool = False) -> ServingStatus:
        try:
            r = await self._health.Check(health_pb2.HealthCheckRequest(service=service),
                                         timeout=self._unary_timeout(timeout), wait_for_ready=wait_for_ready)
        except grpc.RpcError as e:
            raise AdoreError.from_rpc_error(e) from None
        return _enum(ServingStatus, r.status)

    async def wait_ready(self, timeout: float = 60.0, service: str = ADORE_SERVICE) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AdoreError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                 f"{self.server}: {service or 'server'} not SERVING after {timeout:g} s ({last})")
            try:
                status = await self.health(service, timeout=min(left, 5.0), wait_for_ready=True)
                if status == ServingStatus.SERVING:
                    return
                last = getattr(status, "name", str(status))
            except AdoreError as e:
                last = str(e)
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
