"""Typed values of the adore.v1 API: enums, request parts and results (dataclasses), and their wire form.

Every dataclass mirrors one message of proto/adore/v1/adore.proto field for field; enum fields hold the
enums below (or the plain int, for a value added to the API after this SDK was built).
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, Union

from ._pb import adore_pb2 as pb


class Policy(enum.IntEnum):
    """KV release policy (adore.v1.Policy)."""

    UNSPECIFIED = 0  # the server default
    FULL = 1
    WINDOW = 2
    HEAVY_HITTER = 3
    ADORE = 4

    @classmethod
    def parse(cls, value: Union["Policy", int, str]) -> Union["Policy", int]:
        """A Policy from a Policy, an int (passed on as is: the server checks it), or a name such as
        "adore", "heavy_hitter", "heavy-hitter" or "POLICY_WINDOW" (case-insensitive)."""
        if isinstance(value, str):
            key = value.strip().upper().replace("-", "_")
            if key.startswith("POLICY_"):
                key = key[len("POLICY_"):]
            try:
                return cls[key]
            except KeyError:
                names = ", ".join(p.name.lower() for p in cls if p is not cls.UNSPECIFIED)
                raise ValueError(f"unknown policy {value!r} (one of {names})") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"policy must be a Policy, int or str, got {type(value).__name__}")
        return _enum(cls, int(value))


class Backend(enum.IntEnum):
    """Compute backend of the workers (adore.v1.Backend)."""

    UNSPECIFIED = 0
    CPU = 1
    CUDA = 2


class FinishReason(enum.IntEnum):
    """Why generation ended (adore.v1.FinishReason)."""

    UNSPECIFIED = 0
    STOP = 1  # an end token of the model or one of the stop strings
    LENGTH = 2  # max_tokens (or the context length) reached


class ServingStatus(enum.IntEnum):
    """grpc.health.v1 serving status."""

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3


def _enum(cls: type[enum.IntEnum], value: int) -> Any:
    try:
        return cls(value)
    except ValueError:
        return value  # a value newer than this SDK: keep the number


# ------------------------------------------------------------------------------------------------
# Request parts
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation: role "system", "user" or "assistant" (the server checks it)."""

    role: str
    content: str


ChatMessageLike = Union[ChatMessage, Mapping[str, str], Sequence[str]]


def _chat_message(m: ChatMessageLike) -> ChatMessage:
    if isinstance(m, ChatMessage):
        return m
    if isinstance(m, Mapping):
        return ChatMessage(role=m["role"], content=m.get("content", ""))
    if isinstance(m, (tuple, list)) and len(m) == 2:
        return ChatMessage(role=m[0], content=m[1])
    raise TypeError(f"a chat message is a ChatMessage, a {{'role', 'content'}} mapping or a (role, content) pair, "
                    f"got {m!r}")


def build_request(
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
) -> pb.GenerateRequest:
    """The adore.v1.GenerateRequest for these arguments.

    The input is one of `prompt` (raw text), `token_ids` or `messages` (a conversation the server renders
    with the model's chat template). Every other argument left as None is left unset on the wire, so the
    server applies its default (see ModelInfo). Values are not range-checked here: the server does it and
    answers INVALID_ARGUMENT naming the field.
    """
    given = [name for name, v in (("prompt", prompt), ("token_ids", token_ids), ("messages", messages))
             if v is not None]
    if len(given) > 1:
        raise ValueError(f"give one of prompt, token_ids, messages (got {' and '.join(given)})")
    req = pb.GenerateRequest()
    if prompt is not None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str (use token_ids= or messages= for other inputs), "
                            f"got {type(prompt).__name__}")
        req.text = prompt
    elif token_ids is not None:
        req.token_ids.ids.extend(int(t) for t in token_ids)
        req.token_ids.SetInParent()  # set the oneof even for an empty list (the server then names the field)
    elif messages is not None:
        for m in messages:
            cm = _chat_message(m)
            req.chat.messages.add(role=cm.role, content=cm.content)
        req.chat.SetInParent()
    s = req.sampling
    if max_tokens is not None:
        s.max_tokens = max_tokens
    if temperature is not None:
        s.temperature = temperature
    if top_k is not None:
        s.top_k = top_k
    if top_p is not None:
        s.top_p = top_p
    if seed is not None:
        s.seed = seed
    if stop is not None:
        s.stop.extend([stop] if isinstance(stop, str) else list(stop))
    r = req.release
    if policy is not None:
        r.policy = int(Policy.parse(policy))  # type: ignore[assignment]
    if kv_budget is not None:
        r.kv_budget = kv_budget
    if rebuild is not None:
        r.rebuild = rebuild
    if request_id is not None:
        req.request_id = request_id
    return req


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Delta:
    """New output of a streaming generation: tokens sampled since the previous delta and their text.

    `text` holds only whole UTF-8 characters, so it may be empty while bytes are held back (a token that
    ends inside a character, or text that might begin a stop string); the concatenation of all deltas'
    text is the completion.
    """

    text: str
    token_ids: list[int]


@dataclasses.dataclass(frozen=True)
class Usage:
    prompt_tokens: int  # after tokenization / chat rendering
    completion_tokens: int  # generated tokens, the stop token not included


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock times measured by the server, in milliseconds."""

    ttft_ms: float
    total_ms: float
    queue_ms: float


@dataclasses.dataclass(frozen=True)
class AdoreStats:
    """What the release policy did for a request."""

    policy: Policy
    kv_budget: int  # 0 for FULL
    rebuild: int  # 0 unless ADORE
    tokens_released: int
    tokens_rebuilt: int
    kv_slots_in_use: int


@dataclasses.dataclass(frozen=True)
class GenerateResult:
    """A finished generation: the whole completion and the server's final report."""

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    matched_stop: str  # the stop string that ended generation, "" otherwise
    usage: Usage
    timing: Timing
    adore: AdoreStats
    seed: int  # the seed used (given, or drawn by the server)


@dataclasses.dataclass(frozen=True)
class ReleaseParams:
    policy: Policy
    kv_budget: Optional[int]  # None: unset (the server default)
    rebuild: Optional[int]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    architecture: str
    vocab_size: int
    context_length: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    tensor_parallel_size: int
    backend: Backend
    model_sha256: str
    default_release: ReleaseParams
    available_policies: list[Policy]
    min_kv_budget: int
    max_rebuild: int
    default_max_tokens: int
    chat_template_available: bool


@dataclasses.dataclass(frozen=True)
class RequestCounts:
    ok: int
    invalid_argument: int
    resource_exhausted: int
    unavailable: int
    cancelled: int
    deadline_exceeded: int
    internal: int


@dataclasses.dataclass(frozen=True)
class WorkerStats:
    rank: int
    address: str
    healthy: bool
    steps: int
    last_step_ms: float
    mean_step_ms: float
    p99_step_ms: float
    kv_slots_used: int
    kv_slots_free: int
    # Summed over the rank's steps since the server started, ms: the steps and their collectives (tensor
    # parallelism; 0 with one rank). Differences of two get_stats() calls give the time per step between them.
    step_ms_total: float
    comm_ms_total: float
    last_comm_ms: float


@dataclasses.dataclass(frozen=True)
class ServerStats:
    uptime_s: float
    requests: RequestCounts
    prompt_tokens_total: int
    completion_tokens_total: int
    active_requests: int
    queued_requests: int
    kv_slots_used: int
    kv_slots_free: int
    tokens_released_total: int
    tokens_rebuilt_total: int
    workers: list[WorkerStats]
    # Tensor parallelism: sequence-steps whose KV slot-map hash every rank reported equal (0 with one worker).
    slot_map_checks_total: int


# ------------------------------------------------------------------------------------------------
# Wire -> dataclasses
# ------------------------------------------------------------------------------------------------


def _scalars(cls: type, msg: Any, **override: Any) -> Any:
    """cls built from the same-named fields of msg, with `override` for the non-scalar ones."""
    kwargs = {f.name: override[f.name] if f.name in override else getattr(msg, f.name)
              for f in dataclasses.fields(cls)}
    return cls(**kwargs)


def delta_from_pb(d: pb.TokenDelta) -> Delta:
    return Delta(text=d.text, token_ids=list(d.token_ids))


def result_from_pb(request_id: str, text: str, token_ids: list[int], done: pb.GenerateDone) -> GenerateResult:
    return GenerateResult(
        request_id=request_id,
        text=text,
        token_ids=token_ids,
        finish_reason=_enum(FinishReason, done.finish_reason),
        matched_stop=done.matched_stop,
        usage=_scalars(Usage, done.usage),
        timing=_scalars(Timing, done.timing),
        adore=_scalars(AdoreStats, done.adore, policy=_enum(Policy, done.adore.policy)),
        seed=done.seed,
    )


def model_info_from_pb(m: pb.ModelInfo) -> ModelInfo:
    r = m.default_release
    release = ReleaseParams(policy=_enum(Policy, r.policy),
                            kv_budget=r.kv_budget if r.HasField("kv_budget") else None,
                            rebuild=r.rebuild if r.HasField("rebuild") else None)
    return _scalars(ModelInfo, m, backend=_enum(Backend, m.backend), default_release=release,
                    available_policies=[_enum(Policy, p) for p in m.available_policies])


def server_stats_from_pb(s: pb.ServerStats) -> ServerStats:
    return _scalars(ServerStats, s, requests=_scalars(RequestCounts, s.requests),
                    workers=[_scalars(WorkerStats, w) for w in s.workers])


def to_jsonable(value: Any) -> Any:
    """Plain JSON data of a result: dataclasses as dicts, enums by name (e.g. "ADORE", "LENGTH")."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value
