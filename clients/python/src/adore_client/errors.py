"""The one exception type of the SDK: a failed call, with its gRPC status code and message."""
from __future__ import annotations

import grpc


class AdoreError(Exception):
    """A call failed. `code` is the grpc.StatusCode, `message` the server's status message.

    The server's messages for bad requests begin with the path of the offending field, e.g.
    "sampling.temperature: must be in [0, 100], got -1" with code INVALID_ARGUMENT.
    """

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @property
    def code_name(self) -> str:
        """The status code's name, e.g. "INVALID_ARGUMENT"."""
        return self.code.name

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> "AdoreError":
        code = err.code() if hasattr(err, "code") else None
        details = err.details() if hasattr(err, "details") else None
        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.UNKNOWN
        return cls(code, details or str(err))
