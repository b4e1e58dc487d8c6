"""Starts one real adore-server (CPU backend, small limits, a free port) for the whole test session.

Paths (environment variables, with defaults in this repository):
  ADORE_SERVER_BIN  the adore-server binary       (build/adore-server)
  ADORE_MODEL       the model file                (models/SmolLM2-135M-Instruct.Q4_1.gguf, tools/fetch-model.sh)
  ADORE_CONTROLLER  the trained ADORE controller  (tools/adore/controller.bin)
A missing file fails the tests (it does not skip them).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import queue
import re
import subprocess
import sys
import threading
import time
from typing import Optional

import pytest

from adore_client import Client

REPO = pathlib.Path(__file__).resolve().parents[3]
STARTUP_TIMEOUT_S = 90


@dataclasses.dataclass
class Server:
    address: str
    log: pathlib.Path
    # A secured server's (secure_server): its CA certificate (PEM bytes and file) and bearer token (and file).
    ca: bytes = b""
    ca_file: str = ""
    token: str = ""
    token_file: str = ""


def _path(var: str, default: pathlib.Path, what: str, hint: str) -> str:
    p = os.environ.get(var) or str(default)
    if not os.path.exists(p):
        pytest.fail(f"{what} not found at {p} (set {var}; {hint})", pytrace=False)
    return p


def _adore_cmd() -> list[str]:
    """The installed `adore` console script next to this interpreter, else `python -m adore_client`."""
    script = pathlib.Path(sys.executable).parent / "adore"
    return [str(script)] if script.exists() else [sys.executable, "-m", "adore_client"]


def _run_server(tmp_path_factory: pytest.TempPathFactory, extra_args: tuple[str, ...] = (),
                client_kwargs: Optional[dict] = None):
    """Starts adore-server with `extra_args`, yields its Server once it reports SERVING (asked through a
    Client made with `client_kwargs`), and stops it."""
    binary = _path("ADORE_SERVER_BIN", REPO / "build" / "adore-server", "adore-server",
                   "build it with cmake --build build --target adore-server")
    model = _path("ADORE_MODEL", REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf", "the model",
                  "run tools/fetch-model.sh")
    controller = _path("ADORE_CONTROLLER", REPO / "tools" / "adore" / "controller.bin", "the ADORE controller",
                       "it is committed under tools/adore/")
    log = tmp_path_factory.mktemp("adore-server") / "adore-server.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = [binary, "--model", model, "--controller", controller, "--backend", "cpu", "--listen", "127.0.0.1",
           "--port", "0", "--kv_rows", "2048", "--max_batch", "8", "--default_max_tokens", "16", *extra_args]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file, env=env, text=True)
    lines: "queue.Queue[str]" = queue.Queue()

    def pump() -> None:  # reads the server's stdout for as long as it runs
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()

    def fail(why: str) -> None:
        proc.kill()
        proc.wait()
        pytest.fail(f"adore-server {why}: {' '.join(cmd)}\n--- its log ---\n{log.read_text(errors='replace')}",
                    pytrace=False)

    address = None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while address is None:
        if proc.poll() is not None:
            fail(f"exited with status {proc.returncode} before serving")
        try:
            line = lines.get(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
        except queue.Empty:
            if time.monotonic() > deadline:
                fail(f"did not print its address within {STARTUP_TIMEOUT_S} s")
            continue
        m = re.search(r" on (\S+:\d+)\s*$", line)
        if m:
            address = m.group(1)
    try:
        with Client(address, **(client_kwargs or {})) as c:
            c.wait_ready(timeout=max(1.0, deadline - time.monotonic()))
    except Exception as e:  # noqa: BLE001 - any failure here is a failed start
        fail(f"at {address} never reported SERVING ({e})")
    yield Server(address=address, log=log)
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory):
    yield from _run_server(tmp_path_factory)


@pytest.fixture(scope="session")
def secure_server(tmp_path_factory: pytest.TempPathFactory):
    """An adore-server with TLS (a self-signed certificate for 127.0.0.1 made by the openssl CLI) and a
    bearer token (--auth_token_file)."""
    d = tmp_path_factory.mktemp("adore-secure")
    cert, key, token_file = d / "cert.pem", d / "key.pem", d / "token"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.fail(f"cannot make a test certificate with the openssl CLI (apt-get install openssl): {e}",
                    pytrace=False)
    token = "py-token-5d1e7a"
    token_file.write_text(token + "\n")
    ca = cert.read_bytes()
    args = ("--tls_cert_file", str(cert), "--tls_key_file", str(key), "--auth_token_file", str(token_file))
    for s in _run_server(tmp_path_factory, args, {"root_certificates": ca}):
        yield dataclasses.replace(s, ca=ca, ca_file=str(cert), token=token, token_file=str(token_file))


@pytest.fixture(scope="session")
def client(server: Server):
    with Client(server.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def adore_cmd() -> list[str]:
    return _adore_cmd()
