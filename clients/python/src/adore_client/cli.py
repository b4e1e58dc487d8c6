"""`adore`: the command line of adore-server (generate, chat, bench, health, stats, model-info).

    adore [--server HOST:PORT] [--timeout S] [--token-file F] [--tls | --tls-ca PEM] COMMAND [options]

The server defaults to $ADORE_SERVER, else 127.0.0.1:50051. Failed calls print
"adore: CODE: message" on stderr and exit with status 1. A server started with --auth_token_file needs
--token-file (default $ADORE_TOKEN_FILE); one with --tls_cert_file needs --tls (the system's root
certificates) or --tls-ca (the CA certificate the server's chains to, default $ADORE_TLS_CA).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from typing import Any, Optional, Sequence, TextIO

from . import __version__
from .aio import AsyncClient
from .client import ADORE_SERVICE, DEFAULT_SERVER, Client
from .errors import AdoreError
from .types import ChatMessage, GenerateResult, Policy, ServingStatus, to_jsonable

POLICIES = [p.name.lower() for p in Policy if p is not Policy.UNSPECIFIED]


# ------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------


def _sampling_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("sampling and release (unset: the server's defaults, see `adore model-info`)")
    g.add_argument("--max-tokens", "-n", type=int, help="most tokens to generate")
    g.add_argument("--temperature", "-t", type=float, help="0 = greedy")
    g.add_argument("--top-k", type=int, help="0 = no limit")
    g.add_argument("--top-p", type=float, help="nucleus sampling, (0, 1]")
    g.add_argument("--seed", type=int, help="seed of the request's random generator")
    g.add_argument("--stop", action="append", metavar="TEXT", help="stop string (repeatable)")
    g.add_argument("--policy", choices=POLICIES, help="KV release policy")
    g.add_argument("--kv-budget", type=int, help="KV slots per sequence (window, heavy_hitter, adore)")
    g.add_argument("--rebuild", type=int, help="released tokens rebuilt per step (adore)")
    return p


def _gen_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                seed=args.seed, stop=args.stop, policy=args.policy, kv_budget=args.kv_budget,
                rebuild=args.rebuild)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="adore", description="Command line of the ADORE inference server.")
    ap.add_argument("--server", "-s", default=os.environ.get("ADORE_SERVER", DEFAULT_SERVER),
                    help="host:port of adore-server (default: $ADORE_SERVER or %(default)s)")
    ap.add_argument("--timeout", type=float, help="deadline of each call in seconds (default: none for "
                    "generation, 30 s for the others)")
    ap.add_argument("--token-file", default=os.environ.get("ADORE_TOKEN_FILE") or None, metavar="F",
                    help="file holding the server's bearer token (default: $ADORE_TOKEN_FILE)")
    ap.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's root certificates")
    ap.add_argument("--tls-ca", default=os.environ.get("ADORE_TLS_CA") or None, metavar="PEM",
                    help="connect with TLS, trusting this CA certificate file (default: $ADORE_TLS_CA)")
    ap.add_argument("--version", action="version", version=f"adore {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    samp = _sampling_parent()

    g = sub.add_parser("generate", parents=[samp], help="generate a completion, streamed to stdout",
                       description="Generates a completion of PROMPT (raw text, no chat template) and streams "
                                   "it to stdout.")
    g.add_argument("prompt", nargs="?", help="the prompt; '-' or absent: read stdin")
    g.add_argument("--token-ids", help="comma-separated token ids instead of a text prompt")
    g.add_argument("--request-id", help="request id echoed by the server")
    g.add_argument("--stats", action="store_true", help="print finish reason, usage, timing and ADORE stats "
                   "to stderr at the end")
    g.add_argument("--json", action="store_true", help="print the whole result as JSON instead of streaming")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", parents=[samp], help="chat with the model (its chat template)",
                       description="Chats with the model. With MESSAGE: one turn, the reply on stdout. Without: "
                                   "an interactive conversation read from stdin (/reset clears it, /exit or EOF "
                                   "ends it). The server renders the conversation with the model's chat "
                                   "template (ChatML for SmolLM2: <|im_start|>role\\n...<|im_end|>); `adore "
                                   "model-info` tells whether the model has one.")
    c.add_argument("message", nargs="?", help="one user message (absent: interactive)")
    c.add_argument("--system", help="system message opening the conversation (default: the template's own)")
    c.add_argument("--stats", action="store_true", help="print usage and timing to stderr after each reply")
    c.set_defaults(func=cmd_chat)

    b = sub.add_parser("bench", parents=[samp], help="load generator: concurrent streaming requests",
                       description="Sends REQUESTS streaming generations, CONCURRENCY at a time, shows a progress "
                                   "bar on stderr and prints a summary: throughput, time to first token (TTFT) and "
                                   "inter-token latency (ITL) percentiles, measured here at the client.")
    b.add_argument("--requests", "-N", type=int, default=32, help="requests in all (default %(default)s)")
    b.add_argument("--concurrency", "-c", type=int, help="requests in flight at once (default: all of them)")
    b.add_argument("--prompt", "-p", action="append",
                   help="prompt (repeatable; the requests cycle through them; default: a short story opening)")
    b.add_argument("--prompt-file", help="file with one prompt per line")
    b.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    b.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    b.set_defaults(func=cmd_bench, max_tokens_default=64)

    h = sub.add_parser("health", help="grpc.health.v1 status; exit 0 when SERVING")
    h.add_argument("--service", default="", help=f"service name: '' = the server (default), {ADORE_SERVICE!r} = "
                   "model loaded")
    h.add_argument("--wait", type=float, metavar="S", help="wait up to S seconds for SERVING")
    h.set_defaults(func=cmd_health)

    s = sub.add_parser("stats", help="the server's counters and gauges")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_stats)

    m = sub.add_parser("model-info", help="the served model, its limits and the server's defaults")
    m.add_argument("--json", action="store_true", help="print JSON")
    m.set_defaults(func=cmd_model_info)
    return ap


# ------------------------------------------------------------------------------------------------
# generate / chat
# ------------------------------------------------------------------------------------------------


def _stats_line(r: GenerateResult) -> str:
    a = r.adore
    stop = f" matched_stop={r.matched_stop!r}" if r.matched_stop else ""
    return (f"[{getattr(r.finish_reason, 'name', r.finish_reason)}{stop}] prompt_tokens={r.usage.prompt_tokens} "
            f"completion_tokens={r.usage.completion_tokens} ttft={r.timing.ttft_ms:.1f}ms "
            f"total={r.timing.total_ms:.1f}ms policy={getattr(a.policy, 'name', a.policy)} "
            f"kv_budget={a.kv_budget} rebuild={a.rebuild} released={a.tokens_released} "
            f"rebuilt={a.tokens_rebuilt} kv_slots={a.kv_slots_in_use} seed={r.seed}")


def _stream_to(stream: Any, out: TextIO) -> GenerateResult:
    ended_with_newline = True
    for d in stream:
        if d.text:
            out.write(d.text)
            out.flush()
            ended_with_newline = d.text.endswith("\n")
    if not ended_with_newline:
        out.write("\n")
        out.flush()
    return stream.result()


def cmd_generate(args: argparse.Namespace, client: Client) -> int:
    kwargs = _gen_kwargs(args)
    if args.token_ids is not None:
        if args.prompt is not None:
            raise SystemExit("adore generate: give a prompt or --token-ids, not both")
        try:
            ids = [int(t) for t in args.token_ids.replace(" ", "").split(",") if t]
        except ValueError:
            raise SystemExit(f"adore generate: --token-ids: not a comma-separated list of integers: "
                             f"{args.token_ids!r}") from None
        kwargs["token_ids"] = ids
    else:
        prompt = args.prompt
        if prompt is None or prompt == "-":
            prompt = sys.stdin.read()
        kwargs["prompt"] = prompt
    stream = client.generate_stream(request_id=args.request_id, **kwargs)
    if args.json:
        print(json.dumps(to_jsonable(stream.result()), indent=2))
        return 0
    with stream:
        r = _stream_to(stream, sys.stdout)
    if args.stats:
        print(_stats_line(r), file=sys.stderr)
    return 0


def _chat_turn(args: argparse.Namespace, client: Client, messages: list[ChatMessage]) -> str:
    # The server renders the conversation with the model's own chat template (GenerateRequest.chat), then
    # tokenizes it with its special tokens; a model without a template answers FAILED_PRECONDITION "chat".
    stream = client.generate_stream(messages=messages, **_gen_kwargs(args))
    with stream:
        r = _stream_to(stream, sys.stdout)
    if args.stats:
        print(_stats_line(r), file=sys.stderr)
    return r.text


def cmd_chat(args: argparse.Namespace, client: Client) -> int:
    history: list[ChatMessage] = []
    if args.system is not None:
        history.append(ChatMessage("system", args.system))
    if args.message is not None:
        _chat_turn(args, client, history + [ChatMessage("user", args.message)])
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print("adore chat: /reset clears the conversation, /exit or Ctrl-D ends it", file=sys.stderr)
    conversation = list(history)
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            break
        text = line.rstrip("\n")
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            conversation = list(history)
            continue
        if not text.strip():
            continue
        conversation.append(ChatMessage("user", text))
        reply = _chat_turn(args, client, conversation)
        conversation.append(ChatMessage("assistant", reply))
    return 0


# ------------------------------------------------------------------------------------------------
# bench
# ------------------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _dist(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    if not v:
        return {"count": 0}
    return {"count": len(v), "mean": sum(v) / len(v), "min": v[0], "p50": percentile(v, 50),
            "p90": percentile(v, 90), "p99": percentile(v, 99), "max": v[-1]}


class ProgressBar:
    """A one-line progress bar (redrawn at most 10 times a second); by default only on a terminal."""

    def __init__(self, total: int, out: TextIO, enabled: Optional[bool] = None):
        self.total = total
        self.out = out
        self.enabled = out.isatty() if enabled is None else enabled
        self.start = time.perf_counter()
        self.last_draw = 0.0

    def update(self, done: int, tokens: int, failed: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        elapsed = now - self.start
        width = 30
        filled = int(width * done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        fail = f"  {failed} failed" if failed else ""
        rate = tokens / elapsed if elapsed > 0 else 0.0
        self.out.write(f"\r[{bar}] {done}/{self.total} requests  {tokens} tokens  {rate:.1f} tok/s  "
                       f"{elapsed:.1f}s{fail}\033[K")
        self.out.flush()

    def close(self) -> None:
        if self.enabled:
            self.out.write("\n")
            self.out.flush()


async def run_bench(server: str, prompts: list[str], requests: int, concurrency: int, kwargs: dict[str, Any],
                    timeout: Optional[float], progress: ProgressBar,
                    connection: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Runs the load; returns the summary (times in milliseconds, measured at the client)."""
    ttft: list[float] = []
    itl: list[float] = []
    latency: list[float] = []
    errors: dict[str, int] = {}
    first_error: dict[str, str] = {}
    counters = {"done": 0, "tokens": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0}
    sem = asyncio.Semaphore(concurrency)

    async with AsyncClient(server, timeout=timeout, **(connection or {})) as client:
        async def one(i: int) -> None:
            async with sem:
                t0 = time.perf_counter()
                last: Optional[float] = None
                try:
                    stream = client.generate_stream(prompts[i % len(prompts)], **kwargs)
                    async for d in stream:
                        now = time.perf_counter()
                        n = len(d.token_ids)
                        if last is None:
                            ttft.append((now - t0) * 1e3)
                        elif n:
                            itl.extend([(now - last) * 1e3 / n] * n)
                        last = now
                        counters["tokens"] += n
                        progress.update(counters["done"], counters["tokens"], counters["failed"])
                    r = await stream.result()
                    latency.append((time.perf_counter() - t0) * 1e3)
                    counters["prompt_tokens"] += r.usage.prompt_tokens
                    counters["completion_tokens"] += r.usage.completion_tokens
                except AdoreError as e:
                    counters["failed"] += 1
                    errors[e.code_name] = errors.get(e.code_name, 0) + 1
                    first_error.setdefault(e.code_name, e.message)
                counters["done"] += 1
                progress.update(counters["done"], counters["tokens"], counters["failed"], force=True)

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - start
    progress.close()
    ok = requests - counters["failed"]
    return {
        "server": server,
        "requests": requests,
        "concurrency": concurrency,
        "ok": ok,
        "failed": counters["failed"],
        "errors": errors,
        "error_messages": first_error,
        "duration_s": wall,
        "requests_per_s": ok / wall if wall > 0 else 0.0,
        "prompt_tokens": counters["prompt_tokens"],
        "output_tokens": counters["completion_tokens"],
        "output_tokens_per_s": counters["completion_tokens"] / wall if wall > 0 else 0.0,
        "ttft_ms": _dist(ttft),
        "itl_ms": _dist(itl),
        "latency_ms": _dist(latency),
    }


def format_summary(s: dict[str, Any]) -> str:
    def row(name: str, d: dict[str, float]) -> str:
        if not d.get("count"):
            return f"{name:<14}-"
        return (f"{name:<14}p50 {d['p50']:9.2f}   p90 {d['p90']:9.2f}   p99 {d['p99']:9.2f}   "
                f"mean {d['mean']:9.2f}   max {d['max']:9.2f}")

    lines = [
        f"server        {s['server']}",
        f"requests      {s['ok']} ok, {s['failed']} failed ({s['requests']} sent, {s['concurrency']} at a time)",
    ]
    for code, n in sorted(s["errors"].items()):
        lines.append(f"  {code:<12}{n}  e.g. {s['error_messages'][code]}")
    lines += [
        f"duration      {s['duration_s']:.2f} s",
        f"throughput    {s['output_tokens_per_s']:.1f} output tok/s, {s['requests_per_s']:.2f} req/s "
        f"({s['output_tokens']} output, {s['prompt_tokens']} prompt tokens)",
        row("TTFT (ms)", s["ttft_ms"]),
        row("ITL (ms)", s["itl_ms"]),
        row("latency (ms)", s["latency_ms"]),
    ]
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace, client: Client) -> int:
    if args.requests < 1:
        raise SystemExit("adore bench: --requests must be >= 1")
    concurrency = args.concurrency if args.concurrency is not None else args.requests
    if concurrency < 1:
        raise SystemExit("adore bench: --concurrency must be >= 1")
    prompts = list(args.prompt or [])
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        prompts = ["Once upon a time, in a small village by the sea,"]
    kwargs = _gen_kwargs(args)
    if kwargs["max_tokens"] is None:
        kwargs["max_tokens"] = args.max_tokens_default
    progress = ProgressBar(args.requests, sys.stderr, enabled=args.progress)
    summary = asyncio.run(run_bench(args.server, prompts, args.requests, concurrency, kwargs, args.timeout,
                                    progress, connection_kwargs(args)))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    return 0 if summary["failed"] == 0 else 1


# ------------------------------------------------------------------------------------------------
# health / stats / model-info
# ------------------------------------------------------------------------------------------------


def cmd_health(args: argparse.Namespace, client: Client) -> int:
    if args.wait is not None:
        try:
            client.wait_ready(timeout=args.wait, service=args.service)
        except AdoreError as e:
            print(f"adore: {e}", file=sys.stderr)
    status = client.health(args.service, timeout=args.timeout)
    print(getattr(status, "name", status))
    return 0 if status == ServingStatus.SERVING else 1


def _print_fields(d: dict[str, Any], indent: str = "") -> None:
    width = max((len(k) for k in d), default=0)
    for k, v in d.items():
        if isinstance(v, dict):
            print(f"{indent}{k}:")
            _print_fields(v, indent + "  ")
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for i, item in enumerate(v):
                print(f"{indent}{k}[{i}]:")
                _print_fields(item, indent + "  ")
        elif isinstance(v, list):
            print(f"{indent}{k:<{width}}  {', '.join(str(x) for x in v)}")
        elif isinstance(v, float):
            print(f"{indent}{k:<{width}}  {v:.3f}")
        else:
            print(f"{indent}{k:<{width}}  {v}")


def cmd_stats(args: argparse.Namespace, client: Client) -> int:
    d = to_jsonable(client.stats(timeout=args.timeout))
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        _print_fields(d)
    return 0


def cmd_model_info(args: argparse.Namespace, client: Client) -> int:
    d = to_jsonable(client.model_info(timeout=args.timeout))
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        _print_fields(d)
    return 0


def connection_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Client arguments from --token-file, --tls and --tls-ca (SystemExit naming a file it cannot read)."""
    out: dict[str, Any] = {}
    try:
        if args.token_file:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().rstrip()
            if not token:
                raise SystemExit(f"adore: --token-file: {args.token_file} is empty")
            out["token"] = token
        if args.tls_ca:
            with open(args.tls_ca, "rb") as f:
                out["root_certificates"] = f.read()
    except OSError as e:
        raise SystemExit(f"adore: cannot read {e.filename}: {e.strerror}") from None
    if args.tls:
        out["tls"] = True
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    connection = connection_kwargs(args)
    try:
        with Client(args.server, timeout=args.timeout, **connection) as client:
            return args.func(args, client)
    except AdoreError as e:
        sys.stdout.flush()
        print(f"adore: {e.code_name}: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `adore generate ... | head`
        try:
            sys.stdout.close()
        except Exception:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
