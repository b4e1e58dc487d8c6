"""Python SDK of the ADORE runtime: sync and asyncio clients of adore-server's adore.v1 gRPC API.

    from adore_client import Client
    with Client("127.0.0.1:50051") as c:
        print(c.generate("The capital of France is", max_tokens=8).text)
"""
from .aio import AsyncClient, AsyncGenerateStream
from .client import ADORE_SERVICE, DEFAULT_SERVER, Client, GenerateStream
from .errors import AdoreError
from .types import (
    AdoreStats,
    Backend,
    ChatMessage,
    Delta,
    FinishReason,
    GenerateResult,
    ModelInfo,
    Policy,
    ReleaseParams,
    RequestCounts,
    ServerStats,
    ServingStatus,
    Timing,
    Usage,
    WorkerStats,
    build_request,
    to_jsonable,
)

__version__ = "0.1.0"

__all__ = [
    "ADORE_SERVICE",
    "AdoreError",
    "AdoreStats",
    "AsyncClient",
    "AsyncGenerateStream",
    "Backend",
    "ChatMessage",
    "Client",
    "DEFAULT_SERVER",
    "Delta",
    "FinishReason",
    "GenerateResult",
    "GenerateStream",
    "ModelInfo",
    "Policy",
    "ReleaseParams",
    "RequestCounts",
    "ServerStats",
    "ServingStatus",
    "Timing",
    "Usage",
    "WorkerStats",
    "build_request",
    "to_jsonable",
]
