from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Policy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLICY_UNSPECIFIED: _ClassVar[Policy]
    POLICY_FULL: _ClassVar[Policy]
    POLICY_WINDOW: _ClassVar[Policy]
    POLICY_HEAVY_HITTER: _ClassVar[Policy]
    POLICY_ADORE: _ClassVar[Policy]

class Backend(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_UNSPECIFIED: _ClassVar[Backend]
    BACKEND_CPU: _ClassVar[Backend]
    BACKEND_CUDA: _ClassVar[Backend]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
POLICY_UNSPECIFIED: Policy
POLICY_FULL: Policy
POLICY_WINDOW: Policy
POLICY_HEAVY_HITTER: Policy
POLICY_ADORE: Policy
BACKEND_UNSPECIFIED: Backend
BACKEND_CPU: Backend
BACKEND_CUDA: Backend
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason

class GenerateRequest(_message.Message):
    __slots__ = ("text", "token_ids", "chat", "sampling", "release", "request_id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: TokenIds
    chat: ChatMessages
    sampling: SamplingParams
    release: ReleaseParams
    request_id: str
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ..., chat: _Optional[_Union[ChatMessages, _Mapping]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., release: _Optional[_Union[ReleaseParams, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ChatMessages(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_k", "top_p", "seed", "stop")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ...) -> None: ...

class ReleaseParams(_message.Message):
    __slots__ = ("policy", "kv_budget", "rebuild")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    KV_BUDGET_FIELD_NUMBER: _ClassVar[int]
    REBUILD_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    kv_budget: int
    rebuild: int
    def __init__(self, policy: _Optional[_Union[Policy, str]] = ..., kv_budget: _Optional[int] = ..., rebuild: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("request_id", "delta", "done")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    delta: TokenDelta
    done: GenerateDone
    def __init__(self, request_id: _Optional[str] = ..., delta: _Optional[_Union[TokenDelta, _Mapping]] = ..., done: _Optional[_Union[GenerateDone, _Mapping]] = ...) -> None: ...

class TokenDelta(_message.Message):
    __slots__ = ("token_ids", "text")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ...) -> None: ...

class GenerateDone(_message.Message):
    __slots__ = ("finish_reason", "matched_stop", "usage", "timing", "adore", "seed")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    MATCHED_STOP_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    ADORE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    finish_reason: FinishReason
    matched_stop: str
    usage: Usage
    timing: Timing
    adore: AdoreStats
    seed: int
    def __init__(self, finish_reason: _Optional[_Union[FinishReason, str]] = ..., matched_stop: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., adore: _Optional[_Union[AdoreStats, _Mapping]] = ..., seed: _Optional[int] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("ttft_ms", "total_ms", "queue_ms")
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    ttft_ms: float
    total_ms: float
    queue_ms: float
    def __init__(self, ttft_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ...) -> None: ...

class AdoreStats(_message.Message):
    __slots__ = ("policy", "kv_budget", "rebuild", "tokens_released", "tokens_rebuilt", "kv_slots_in_use")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    KV_BUDGET_FIELD_NUMBER: _ClassVar[int]
    REBUILD_FIELD_NUMBER: _ClassVar[int]
    TOKENS_RELEASED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_REBUILT_FIELD_NUMBER: _ClassVar[int]
    KV_SLOTS_IN_USE_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    kv_budget: int
    rebuild: int
    tokens_released: int
    tokens_rebuilt: int
    kv_slots_in_use: int
    def __init__(self, policy: _Optional[_Union[Policy, str]] = ..., kv_budget: _Optional[int] = ..., rebuild: _Optional[int] = ..., tokens_released: _Optional[int] = ..., tokens_rebuilt: _Optional[int] = ..., kv_slots_in_use: _Optional[int] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "architecture", "vocab_size", "context_length", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "tensor_parallel_size", "backend", "model_sha256", "default_release", "available_policies", "min_kv_budget", "max_rebuild", "default_max_tokens", "chat_template_available")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_HEADS_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    TENSOR_PARALLEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RELEASE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_POLICIES_FIELD_NUMBER: _ClassVar[int]
    MIN_KV_BUDGET_FIELD_NUMBER: _ClassVar[int]
    MAX_REBUILD_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
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
    available_policies: _containers.RepeatedScalarFieldContainer[Policy]
    min_kv_budget: int
    max_rebuild: int
    default_max_tokens: int
    chat_template_available: bool
    def __init__(self, name: _Optional[str] = ..., architecture: _Optional[str] = ..., vocab_size: _Optional[int] = ..., context_length: _Optional[int] = ..., hidden_size: _Optional[int] = ..., num_layers: _Optional[int] = ..., num_heads: _Optional[int] = ..., num_kv_heads: _Optional[int] = ..., tensor_parallel_size: _Optional[int] = ..., backend: _Optional[_Union[Backend, str]] = ..., model_sha256: _Optional[str] = ..., default_release: _Optional[_Union[ReleaseParams, _Mapping]] = ..., available_policies: _Optional[_Iterable[_Union[Policy, str]]] = ..., min_kv_budget: _Optional[int] = ..., max_rebuild: _Optional[int] = ..., default_max_tokens: _Optional[int] = ..., chat_template_available: _Optional[bool] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerStats(_message.Message):
    __slots__ = ("uptime_s", "requests", "prompt_tokens_total", "completion_tokens_total", "active_requests", "queued_requests", "kv_slots_used", "kv_slots_free", "tokens_released_total", "tokens_rebuilt_total", "workers", "slot_map_checks_total")
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    KV_SLOTS_USED_FIELD_NUMBER: _ClassVar[int]
    KV_SLOTS_FREE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_RELEASED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TOKENS_REBUILT_TOTAL_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    SLOT_MAP_CHECKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
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
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStats]
    slot_map_checks_total: int
    def __init__(self, uptime_s: _Optional[float] = ..., requests: _Optional[_Union[RequestCounts, _Mapping]] = ..., prompt_tokens_total: _Optional[int] = ..., completion_tokens_total: _Optional[int] = ..., active_requests: _Optional[int] = ..., queued_requests: _Optional[int] = ..., kv_slots_used: _Optional[int] = ..., kv_slots_free: _Optional[int] = ..., tokens_released_total: _Optional[int] = ..., tokens_rebuilt_total: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerStats, _Mapping]]] = ..., slot_map_checks_total: _Optional[int] = ...) -> None: ...

class RequestCounts(_message.Message):
    __slots__ = ("ok", "invalid_argument", "resource_exhausted", "unavailable", "cancelled", "deadline_exceeded", "internal")
    OK_FIELD_NUMBER: _ClassVar[int]
    INVALID_ARGUMENT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_EXHAUSTED_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_EXCEEDED_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    ok: int
    invalid_argument: int
    resource_exhausted: int
    unavailable: int
    cancelled: int
    deadline_exceeded: int
    internal: int
    def __init__(self, ok: _Optional[int] = ..., invalid_argument: _Optional[int] = ..., resource_exhausted: _Optional[int] = ..., unavailable: _Optional[int] = ..., cancelled: _Optional[int] = ..., deadline_exceeded: _Optional[int] = ..., internal: _Optional[int] = ...) -> None: ...

class WorkerStats(_message.Message):
    __slots__ = ("rank", "address", "healthy", "steps", "last_step_ms", "mean_step_ms", "p99_step_ms", "kv_slots_used", "kv_slots_free", "step_ms_total", "comm_ms_total", "last_comm_ms")
    RANK_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_STEP_MS_FIELD_NUMBER: _ClassVar[int]
    P99_STEP_MS_FIELD_NUMBER: _ClassVar[int]
    KV_SLOTS_USED_FIELD_NUMBER: _ClassVar[int]
    KV_SLOTS_FREE_FIELD_NUMBER: _ClassVar[int]
    STEP_MS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    COMM_MS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LAST_COMM_MS_FIELD_NUMBER: _ClassVar[int]
    rank: int
    address: str
    healthy: bool
    steps: int
    last_step_ms: float
    mean_step_ms: float
    p99_step_ms: float
    kv_slots_used: int
    kv_slots_free: int
    step_ms_total: float
    comm_ms_total: float
    last_comm_ms: float
    def __init__(self, rank: _Optional[int] = ..., address: _Optional[str] = ..., healthy: _Optional[bool] = ..., steps: _Optional[int] = ..., last_step_ms: _Optional[float] = ..., mean_step_ms: _Optional[float] = ..., p99_step_ms: _Optional[float] = ..., kv_slots_used: _Optional[int] = ..., kv_slots_free: _Optional[int] = ..., step_ms_total: _Optional[float] = ..., comm_ms_total: _Optional[float] = ..., last_comm_ms: _Optional[float] = ...) -> None: ...
