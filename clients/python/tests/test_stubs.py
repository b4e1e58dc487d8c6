"""The committed stubs (src/adore_client/_pb) are what tools/regen_protos.py makes from proto/ today."""
from __future__ import annotations

import pathlib
import subprocess
import sys

PKG = pathlib.Path(__file__).resolve().parents[1]


def test_committed_stubs_are_current() -> None:
    r = subprocess.run([sys.executable, str(PKG / "tools" / "regen_protos.py"), "--check"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"


def test_installed_stubs_match_the_committed_ones() -> None:
    import adore_client._pb as installed

    here = pathlib.Path(installed.__file__).parent
    for name in ("adore_pb2.py", "adore_pb2_grpc.py"):
        assert (here / name).read_text() == (PKG / "src" / "adore_client" / "_pb" / name).read_text(), name


def test_typed_results_mirror_every_proto_field() -> None:
    """Each dataclass has exactly its message's fields, and build_request takes every request field, so a
    field added to adore.proto (and regenerated into the stubs) must be added to the SDK too."""
    import dataclasses
    import inspect

    import adore_client as ac
    from adore_client._pb import adore_pb2 as pb

    def names(msg) -> set[str]:
        return {f.name for f in msg.DESCRIPTOR.fields}

    pairs = [(ac.Usage, pb.Usage), (ac.Timing, pb.Timing), (ac.AdoreStats, pb.AdoreStats),
             (ac.ModelInfo, pb.ModelInfo), (ac.ReleaseParams, pb.ReleaseParams),
             (ac.RequestCounts, pb.RequestCounts), (ac.WorkerStats, pb.WorkerStats),
             (ac.ServerStats, pb.ServerStats), (ac.Delta, pb.TokenDelta), (ac.ChatMessage, pb.ChatMessage)]
    for cls, msg in pairs:
        assert {f.name for f in dataclasses.fields(cls)} == names(msg), cls.__name__
    result = {f.name for f in dataclasses.fields(ac.GenerateResult)}
    assert result == names(pb.GenerateDone) | {"request_id", "text", "token_ids"}

    params = set(inspect.signature(ac.build_request).parameters)
    assert names(pb.SamplingParams) | names(pb.ReleaseParams) <= params
    assert {"prompt", "token_ids", "messages", "request_id"} <= params
    assert {f.name for f in pb.GenerateRequest.DESCRIPTOR.fields} == {"text", "token_ids", "chat", "sampling",
                                                                      "release", "request_id"}
    for enum_cls, pb_enum in [(ac.Policy, pb.Policy), (ac.Backend, pb.Backend), (ac.FinishReason, pb.FinishReason)]:
        assert {e.value for e in enum_cls} == set(pb_enum.values()), enum_cls.__name__
    for client_cls in (ac.Client, ac.AsyncClient):
        for method in (client_cls.generate_stream, client_cls.generate):
            assert params <= set(inspect.signature(method).parameters), method
