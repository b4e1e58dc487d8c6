"""The synchronous client of adore-server."""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Optional, Union

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ._pb import adore_pb2 as pb
from ._pb import adore_pb2_grpc as pb_grpc
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
    delta_from_pb,
    model_info_from_pb,
    result_from_pb,
    server_stats_from_pb,
)

DEFAULT_SERVER = "127.0.0.1:50051"
ADORE_SERVICE = "adore.v1.Adore"  # its health status is SERVING once the model is loaded on every worker


def auth_metadata(token: Optional[str]) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries a bearer token (adore-server --auth_token_file): empty without one."""
    if not token:
        return ()
    return (("authorization", f"Bearer {token}"),)


class _StreamState:
    """What a Generate stream has delivered so far (shared by the sync and asyncio streams)."""

    def __init__(self) -> None:
        self.request_id = ""
        self.text: list[str] = []
        self.tokens: list[int] = []
        self.result: Optional[GenerateResult] = None
        self.error: Optional[AdoreError] = None
        self.ended = False  # the call is over (status read, or failed)

    def take(self, msg: pb.GenerateResponse) -> Optional[Delta]:
        """Records one message; returns its Delta, or None for the final `done`."""
        self.request_id = msg.request_id
        kind = msg.WhichOneof("kind")
        if kind == "delta":
            d = delta_from_pb(msg.delta)
            self.text.append(d.text)
            self.tokens.extend(d.token_ids)
            return d
        if kind == "done":
            self.result = result_from_pb(self.request_id, "".join(self.text), list(self.tokens), msg.done)
        return None  # `done`, or a kind newer than this SDK

    def fail(self, err: AdoreError) -> AdoreError:
        self.ended = True
        self.error = err
        return err

    def finish(self) -> None:
        """The stream ended with status OK."""
        self.ended = True
        if self.result is None:
            raise self.fail(AdoreError(grpc.StatusCode.INTERNAL, "Generate stream ended without a done message"))


class GenerateStream:
    """A running Generate call. Iterate it for the Delta objects as they arrive; `result()` then gives
    the GenerateResult (it reads whatever is left first). A failed call raises AdoreError from the
    iteration (or from `result()`). `cancel()` (or leaving a `with` block early) ends the request on the
    server."""

    def __init__(self, call: Any):
        self._call = call
        self._state = _StreamState()

    @property
    def request_id(self) -> str:
        """The request id (the caller's or the server's), once the first message has arrived."""
        return self._state.request_id

    def __iter__(self) -> "GenerateStream":
        return self

    def __next__(self) -> Delta:
        st = self._state
        while True:
            if st.ended:
                if st.error is not None:
                    raise st.error
                raise StopIteration
            try:
                msg = next(self._call)
            except StopIteration:
                st.finish()
                raise StopIteration from None
            except grpc.RpcError as e:
                raise st.fail(AdoreError.from_rpc_error(e)) from None
            delta = st.take(msg)
            if delta is not None:
                return delta

    def result(self) -> GenerateResult:
        for _ in self:
            pass
        assert self._state.result is not None
        return self._state.result

    def cancel(self) -> None:
        """Cancels the call if it is still running (the server frees the request's KV slots)."""
        if not self._state.ended:
            self._call.cancel()

    def __enter__(self) -> "GenerateStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()


class Client:
    """Synchronous client of the adore.v1.Adore API.

        with Client("127.0.0.1:50051") as c:
            for delta in c.generate_stream("Once upon a time", max_tokens=32):
                print(delta.text, end="", flush=True)
            r = c.generate("The capital of France is", max_tokens=8)
            print(r.text, r.finish_reason, r.usage.completion_tokens)

    `timeout` (seconds) is the default deadline of every call; None means none for Generate and 30 s for
    the other calls. `credentials` (grpc.ChannelCredentials) makes a secure channel; `options` are
    grpc channel options; `channel` uses an existing grpc.Channel instead of making one.

    A server started with --tls_cert_file: `tls=True` (the system's root certificates) or
    `root_certificates` (PEM bytes, e.g. the CA file's contents; implies TLS). With --auth_token_file:
    `token`, sent as "authorization: Bearer <token>" on every call (also over a given `channel`); a call
    without it raises AdoreError UNAUTHENTICATED (health needs none).
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        timeout: Optional[float] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        options: Optional[Sequence[tuple[str, Any]]] = None,
        channel: Optional[grpc.Channel] = None,
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
                channel = grpc.secure_channel(server, credentials, options=opts)
            else:
                channel = grpc.insecure_channel(server, options=opts)
            self._owns_channel = True
        else:
            self._owns_channel = False
        self._channel = channel
        self._stub = pb_grpc.AdoreStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _unary_timeout(self, timeout: Optional[float]) -> float:
        if timeout is not None:
            return timeout
        return self.timeout if self.timeout is not None else 30.0

    # -- Generate ----------------------------------------------------------------------------------

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
    ) -> GenerateStream:
        """Starts a generation and returns its stream (see GenerateStream).

        The input is exactly one of `prompt` (raw text), `token_ids`, or `messages` (a conversation the
        server renders with the model's chat template: ChatMessage objects, {"role", "content"} dicts or
        (role, content) pairs). The other arguments mirror adore.v1.SamplingParams and ReleaseParams;
        None leaves a field unset (the server default). `policy` is a Policy, an int or a name ("full",
        "window", "heavy_hitter", "adore"). `timeout` is the whole call's deadline in seconds (default: the
        client's). The server validates every value (AdoreError INVALID_ARGUMENT naming the field)."""
        req = build_request(prompt, token_ids=token_ids, messages=messages, max_tokens=max_tokens,
                            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop,
                            policy=policy, kv_budget=kv_budget, rebuild=rebuild, request_id=request_id)
        return self.generate_request_stream(req, timeout=timeout)

    def generate_request_stream(self, request: pb.GenerateRequest, *,
                                timeout: Optional[float] = None) -> GenerateStream:
        """generate_stream for a ready-made adore.v1.GenerateRequest."""
        t = timeout if timeout is not None else self.timeout
        return GenerateStream(self._stub.Generate(request, timeout=t, metadata=self._metadata))

    def generate(
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
        return self.generate_stream(prompt, token_ids=token_ids, messages=messages, max_tokens=max_tokens,
                                    temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop,
                                    policy=policy, kv_budget=kv_budget, rebuild=rebuild, request_id=request_id,
                                    timeout=timeout).result()

    # -- other calls -------------------------------------------------------------------------------

    def model_info(self, *, timeout: Optional[float] = None) -> ModelInfo:
        """The served model, its limits and the server's defaults."""
        try:
            m = self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self._unary_timeout(timeout),
                                   metadata=self._metadata)
        except grpc.RpcError as e:
            raise AdoreError.from_rpc_error(e) from None
        return model_info_from_pb(m)

    def stats(self, *, timeout: Optional[float] = None) -> ServerStats:
        """The server's counters and gauges since it started."""
        try:
            s = self._stub.GetStats(pb.GetStatsRequest(), timeout=self._unary_timeout(timeout),
                               metadata=self._metadata)
        except grpc.RpcError as e:
            raise AdoreError.from_rpc_error(e) from None
        return server_stats_from_pb(s)

    def health(self, service: str = "", *, timeout: Optional[float] = None,
               wait_for_ready: bool = False) -> ServingStatus:
        """grpc.health.v1 Check: "" is the server, "adore.v1.Adore" is SERVING once the model is loaded.
        An unknown service raises AdoreError with NOT_FOUND."""
        try:
            r = self._health.Check(health_pb2.HealthCheckRequest(service=service),
                                   timeout=self._unary_timeout(timeout), wait_for_ready=wait_for_ready)
        except grpc.RpcError as e:
            raise AdoreError.from_rpc_error(e) from None
        return _enum(ServingStatus, r.status)

    def wait_ready(self, timeout: float = 60.0, service: str = ADORE_SERVICE) -> None:
        """Waits until `service` reports SERVING; AdoreError DEADLINE_EXCEEDED after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AdoreError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                 f"{self.server}: {service or 'server'} not SERVING after {timeout:g} s ({last})")
            try:
                status = self.health(service, timeout=min(left, 5.0), wait_for_ready=True)
                if status == ServingStatus.SERVING:
                    return
                last = getattr(status, "name", str(status))
            except AdoreError as e:
                last = str(e)
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
