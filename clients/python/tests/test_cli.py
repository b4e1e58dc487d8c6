"""The `adore` CLI (the installed console script, run as a subprocess) against a real adore-server."""
from __future__ import annotations

import io
import json
import subprocess

from adore_client import Client
from adore_client.cli import ProgressBar, percentile

PROMPT = "The capital of France is"


def run(adore_cmd: list[str], server, *args: str, stdin: str | None = None, timeout: float = 60):
    return subprocess.run([*adore_cmd, "--server", server.address, *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout)


def with_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def test_health(adore_cmd, server) -> None:
    r = run(adore_cmd, server, "health")
    assert (r.returncode, r.stdout) == (0, "SERVING\n"), r.stderr
    r = run(adore_cmd, server, "health", "--service", "adore.v1.Adore", "--wait", "5")
    assert (r.returncode, r.stdout) == (0, "SERVING\n"), r.stderr
    r = run(adore_cmd, server, "health", "--service", "no.such.Service")
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr


def test_model_info_and_stats(adore_cmd, server) -> None:
    r = run(adore_cmd, server, "model-info", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["vocab_size"] == 49152 and info["backend"] == "CPU"
    assert "ADORE" in info["available_policies"] and info["default_release"]["policy"] == "FULL"
    r = run(adore_cmd, server, "model-info")
    assert r.returncode == 0 and "vocab_size" in r.stdout and "49152" in r.stdout

    r = run(adore_cmd, server, "stats", "--json")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert isinstance(stats["requests"]["ok"], int) and stats["workers"][0]["healthy"] is True
    r = run(adore_cmd, server, "stats")
    assert r.returncode == 0 and "uptime_s" in r.stdout and "workers[0]:" in r.stdout


def test_generate_streams_the_greedy_text(adore_cmd, server, client: Client) -> None:
    expected = client.generate(PROMPT, max_tokens=8, temperature=0)
    r = run(adore_cmd, server, "generate", PROMPT, "--max-tokens", "8", "--temperature", "0", "--stats")
    assert r.returncode == 0, r.stderr
    assert r.stdout == with_newline(expected.text)
    assert f"completion_tokens={len(expected.token_ids)}" in r.stderr and "policy=FULL" in r.stderr

    r = run(adore_cmd, server, "generate", "-", "-n", "8", "-t", "0", stdin=PROMPT)  # prompt from stdin
    assert r.returncode == 0 and r.stdout == with_newline(expected.text), r.stderr

    r = run(adore_cmd, server, "generate", PROMPT, "-n", "8", "-t", "0", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["token_ids"] == expected.token_ids and result["text"] == expected.text
    assert result["finish_reason"] == expected.finish_reason.name

    ids = ",".join(str(t) for t in expected.token_ids)
    r = run(adore_cmd, server, "generate", "--token-ids", ids, "-n", "3", "-t", "0", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["usage"]["prompt_tokens"] == len(expected.token_ids)


def test_generate_with_release_policy_and_seed(adore_cmd, server) -> None:
    args = ["generate", PROMPT, "-n", "4", "--temperature", "0.9", "--seed", "42", "--policy", "heavy_hitter",
            "--kv-budget", "16", "--json"]
    a = run(adore_cmd, server, *args)
    b = run(adore_cmd, server, *args)
    assert a.returncode == 0, a.stderr
    ra, rb = json.loads(a.stdout), json.loads(b.stdout)
    assert ra["token_ids"] == rb["token_ids"] and ra["seed"] == 42
    assert ra["adore"]["policy"] == "HEAVY_HITTER" and ra["adore"]["kv_budget"] == 16


def test_errors_exit_1_with_the_code(adore_cmd, server) -> None:
    r = run(adore_cmd, server, "generate", PROMPT, "--temperature", "-1")
    assert r.returncode == 1
    assert r.stderr.startswith("adore: INVALID_ARGUMENT: sampling.temperature"), r.stderr
    r = subprocess.run([*adore_cmd, "--server", "127.0.0.1:1", "health"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "UNAVAILABLE" in r.stderr


def test_chat(adore_cmd, server, client: Client) -> None:
    question = "What is the capital of France?"
    expected = client.generate(messages=[("user", question)], max_tokens=10, temperature=0)
    r = run(adore_cmd, server, "chat", question, "-n", "10", "-t", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == with_newline(expected.text)
    assert "Paris" in r.stdout

    # Interactive: two turns from stdin; the second request carries the whole conversation.
    second = client.generate(messages=[("system", "Answer briefly."), ("user", question),
                                       ("assistant", client.generate(messages=[("system", "Answer briefly."),
                                                                               ("user", question)],
                                                                     max_tokens=10, temperature=0).text),
                                       ("user", "And of Italy?")], max_tokens=10, temperature=0)
    r = run(adore_cmd, server, "chat", "--system", "Answer briefly.", "-n", "10", "-t", "0",
            stdin=f"{question}\nAnd of Italy?\n/exit\nnot sent\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(with_newline(second.text)), r.stdout


def test_bench(adore_cmd, server) -> None:
    r = run(adore_cmd, server, "bench", "--requests", "4", "--concurrency", "2", "--max-tokens", "6",
            "--temperature", "0", "--json", "--progress", timeout=120)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["requests"], s["ok"], s["failed"], s["concurrency"]) == (4, 4, 0, 2)
    assert s["output_tokens"] > 0 and s["output_tokens_per_s"] > 0
    for key in ("ttft_ms", "latency_ms"):
        assert s[key]["count"] == 4
        assert 0 < s[key]["p50"] <= s[key]["p90"] <= s[key]["p99"] <= s[key]["max"]
    assert s["itl_ms"]["count"] > 0 and s["itl_ms"]["p50"] > 0
    assert "4/4 requests" in r.stderr and "[####" in r.stderr  # the progress bar

    r = run(adore_cmd, server, "bench", "-N", "2", "-n", "3", "-t", "0", "-p", "Hello", "-p", "Goodbye", timeout=120)
    assert r.returncode == 0, r.stderr
    for label in ("throughput", "TTFT (ms)", "ITL (ms)", "p50", "p90", "p99", "2 ok, 0 failed"):
        assert label in r.stdout, r.stdout
    assert r.stderr == ""  # no progress bar when stderr is not a terminal

    r = run(adore_cmd, server, "bench", "-N", "2", "-t", "-1", "--json")
    assert r.returncode == 1
    s = json.loads(r.stdout)
    assert s["failed"] == 2 and s["errors"] == {"INVALID_ARGUMENT": 2}


def test_percentile_and_progress_bar() -> None:
    v = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert (percentile(v, 0), percentile(v, 50), percentile(v, 90), percentile(v, 100)) == (1.0, 3.0, 4.6, 5.0)
    assert percentile([7.0], 99) == 7.0
    out = io.StringIO()
    bar = ProgressBar(4, out, enabled=True)
    bar.update(2, 10, 0, force=True)
    bar.close()
    assert "[###############...............] 2/4 requests  10 tokens" in out.getvalue()
