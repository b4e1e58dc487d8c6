#!/usr/bin/env python3
"""Regenerates the committed gRPC/protobuf stubs of adore_client from the repository's proto/.

    python tools/regen_protos.py          # rewrite src/adore_client/_pb/adore_pb2{.py,.pyi,_grpc.py}
    python tools/regen_protos.py --check  # exit 1 if the committed stubs differ from a fresh generation

Only the public API (proto/adore/v1/adore.proto) is generated; the Worker API is internal to the server.
The generator is pinned (GRPCIO_TOOLS below): the stubs' runtime checks require protobuf and grpcio at least
as new as that generator, which is why pyproject.toml's dependencies name the same versions. To move to a
newer generator, change the pin here and in pyproject.toml ([project.optional-dependencies] test, and the
grpcio / protobuf / grpcio-health-checking floors), run this script and commit the result.

protoc writes `from adore.v1 import adore_pb2` into the service module (the import path follows the
.proto path); the one rewrite made here turns it into a relative import, so the stubs live inside the
adore_client package instead of claiming a top-level `adore` package. The descriptor keeps its canonical
name "adore/v1/adore.proto".
"""
from __future__ import annotations

import argparse
import difflib
import pathlib
import sys
import tempfile

GRPCIO_TOOLS = "1.85.1"

HERE = pathlib.Path(__file__).resolve().parent.parent  # clients/python
DEFAULT_PROTO_ROOT = HERE.parent.parent / "proto"
OUT_DIR = HERE / "src" / "adore_client" / "_pb"
PROTO = "adore/v1/adore.proto"
FILES = ("adore_pb2.py", "adore_pb2.pyi", "adore_pb2_grpc.py")
IMPORT_FROM = "from adore.v1 import adore_pb2 as"
IMPORT_TO = "from . import adore_pb2 as"


def generate(proto_root: pathlib.Path) -> dict[str, str]:
    """Runs protoc (grpcio-tools) and returns {file name: contents} after the import rewrite."""
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError:
        sys.exit(f"regen_protos: needs grpcio-tools=={GRPCIO_TOOLS} (pip install 'grpcio-tools=={GRPCIO_TOOLS}')")
    from importlib.metadata import version

    have = version("grpcio-tools")
    if have != GRPCIO_TOOLS:
        sys.exit(f"regen_protos: grpcio-tools {have} is installed, the stubs are pinned to {GRPCIO_TOOLS} "
                 f"(pip install 'grpcio-tools=={GRPCIO_TOOLS}')")
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = ["grpc_tools.protoc", f"-I{proto_root}", f"-I{well_known}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", str(proto_root / PROTO)]
        if protoc.main(args) != 0:
            sys.exit(f"regen_protos: protoc failed on {proto_root / PROTO}")
        gen = pathlib.Path(tmp) / "adore" / "v1"
        out = {name: (gen / name).read_text(encoding="utf-8") for name in FILES}
    grpc_mod = out["adore_pb2_grpc.py"]
    if IMPORT_FROM not in grpc_mod:
        sys.exit(f"regen_protos: expected '{IMPORT_FROM}' in the generated service module")
    out["adore_pb2_grpc.py"] = grpc_mod.replace(IMPORT_FROM, IMPORT_TO)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed stubs, write nothing")
    ap.add_argument("--proto_root", type=pathlib.Path, default=DEFAULT_PROTO_ROOT,
                    help="folder holding adore/v1/adore.proto (default: the repository's proto/)")
    args = ap.parse_args()
    fresh = generate(args.proto_root)
    if args.check:
        stale = []
        for name, text in fresh.items():
            path = OUT_DIR / name
            old = path.read_text(encoding="utf-8") if path.exists() else ""
            if old != text:
                stale.append(name)
                diff = difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                            f"committed/{name}", f"generated/{name}", n=1)
                sys.stderr.writelines(list(diff)[:40])
        if stale:
            print(f"regen_protos: stale stubs {', '.join(stale)}: run clients/python/tools/regen_protos.py",
                  file=sys.stderr)
            return 1
        print(f"regen_protos: {len(fresh)} stubs current with {args.proto_root / PROTO}")
        return 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in fresh.items():
        (OUT_DIR / name).write_text(text, encoding="utf-8")
    print(f"regen_protos: wrote {', '.join(FILES)} to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
