#!/usr/bin/env python3
"""Checks the rendered Kubernetes overlays (deploy/k8s/overlays/tpN) against what the servers really do.

Run by deploy/validate.sh after `kubectl kustomize` rendered every overlay to RENDERED_DIR/<overlay>.yaml
and kubernetes-validate checked them against the Kubernetes schemas. This script checks what no schema
can, for each overlay tpN:

- the worker StatefulSet has N replicas and the label adore/tensor-parallel-size: "N";
- the coordinator's --workers list (from the flag files the container reads, resolved through the
  ConfigMap volume) names exactly N ranks, adore-worker-0 .. adore-worker-(N-1) in rank order, through
  the StatefulSet's headless Service and the workers' --port; the init container waits on the same list;
- every flag in the containers' arguments and flag files is one that coordinator/grpc/server_main.cc or
  worker/grpc/worker_main.cc defines (ABSL_FLAG), with a value of the flag's type; with --server-bin and
  --worker-bin the real binaries parse the same flags (`--flagfile=... --version` exits 0 only when
  every flag is known and every value parses);
- the two sides agree: the same --backend, one GPU per worker with the cuda backend (none for the
  coordinator), the same Secret behind --worker_secret_file and --secret_file, the model path on the same
  PersistentVolumeClaim mounted at the same path in both (the coordinator sends its path to the workers)
  and created by deploy/k8s/models, whose loader pod mounts it at that path too,
  both listening on 0.0.0.0, probes and Services on the ports the servers listen on (gRPC probes on the
  coordinator and the workers, which serve grpc.health.v1), selectors that match the pods, one coordinator replica with
  the Recreate strategy, non-root pods without privilege escalation, one image for every container.

Then it breaks copies of the tp2 rendering in known ways (MUTATIONS) and fails unless every break is
caught, so a check that silently stopped working shows up.

Exit status 0 when every check passes, 1 otherwise (each failure is printed with its overlay).
"""
from __future__ import annotations

import argparse
import os
import posixpath
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

# Flags every absl binary understands besides its own (absl/flags/parse.cc, absl/flags/internal/usage.cc).
ABSL_BUILTIN_FLAGS = {"flagfile": "list", "fromenv": "list", "tryfromenv": "list", "undefok": "list"}
TP_LABEL = "adore/tensor-parallel-size"
EXPECTED_OVERLAYS = {"tp1": 1, "tp2": 2, "tp4": 4, "tp8": 8}


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []

    def check(self, ok: bool, where: str, message: str) -> bool:
        if not ok:
            self.items.append(f"{where}: {message}")
        return ok


def source_flags(path: Path) -> dict[str, str]:
    """The ABSL_FLAG(type, name, ...) definitions of a main file: name -> C++ type."""
    text = path.read_text()
    flags = {m.group(2): m.group(1).strip() for m in re.finditer(r"ABSL_FLAG\(\s*([\w:<>]+)\s*,\s*(\w+)\s*,", text)}
    if not flags:
        raise SystemExit(f"check_manifests: no ABSL_FLAG definitions found in {path}")
    return flags


def value_fits(cpp_type: str, value: str | None) -> bool:
    if cpp_type in ("int32_t", "int64_t", "int", "uint32_t", "uint64_t"):
        return value is not None and re.fullmatch(r"[+-]?\d+", value) is not None
    if cpp_type == "bool":
        return value is None or value.lower() in ("true", "false", "1", "0", "yes", "no", "t", "f", "y", "n")
    if cpp_type in ("double", "float"):
        try:
            float(value or "")
            return True
        except ValueError:
            return False
    return value is not None  # strings and lists need a value


def parse_flag(token: str) -> tuple[str, str | None] | None:
    if not token.startswith("-"):
        return None
    body = token.lstrip("-")
    if "=" in body:
        name, value = body.split("=", 1)
        return name, value
    return body, None


def read_flagfile_text(text: str) -> list[str]:
    """Lines of an absl flag file that carry flags (absl skips blank lines and # comments)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        out.append(line)
    return out


class Overlay:
    def __init__(self, name: str, docs: list[dict], failures: Failures) -> None:
        self.name = name
        self.f = failures
        self.by_kind: dict[str, list[dict]] = {}
        for d in docs:
            if d:
                self.by_kind.setdefault(d["kind"], []).append(d)

    def one(self, kind: str, name_prefix: str) -> dict | None:
        found = [o for o in self.by_kind.get(kind, []) if o["metadata"]["name"].startswith(name_prefix)]
        self.f.check(len(found) == 1, self.name, f"expected exactly one {kind} named {name_prefix}*, found {len(found)}")
        return found[0] if len(found) == 1 else None

    def configmap(self, name: str) -> dict | None:
        for cm in self.by_kind.get("ConfigMap", []):
            if cm["metadata"]["name"] == name:
                return cm
        return None

    def resolve_file(self, pod_spec: dict, container: dict, path: str, where: str) -> tuple[str, dict] | None:
        """The volume behind a file path in a container: (path inside the volume, volume)."""
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        best = None
        for m in container.get("volumeMounts", []):
            mount = m["mountPath"].rstrip("/")
            if path == mount or path.startswith(mount + "/"):
                if best is None or len(mount) > len(best[0]):
                    best = (mount, m)
        if not self.f.check(best is not None, where, f"{path} is on no mounted volume"):
            return None
        mount, m = best
        volume = volumes.get(m["name"])
        if not self.f.check(volume is not None, where, f"volume {m['name']} of {path} is not defined"):
            return None
        rel = posixpath.relpath(path, mount) if path != mount else ""
        if m.get("subPath"):
            rel = posixpath.join(m["subPath"], rel)
        return rel, volume

    def flags_of(self, pod_spec: dict, container: dict, where: str) -> tuple[list[tuple[str, str | None]], list[str]]:
        """The container's flags in order, with flag files expanded (as absl does), and the raw lines."""
        flags: list[tuple[str, str | None]] = []
        lines: list[str] = []
        args = list(container.get("args", []))
        for token in args[1:]:
            self.f.check("$(" not in token, where, f"argument {token!r}: variable expansion is not checked here")
            parsed = parse_flag(token)
            if not self.f.check(parsed is not None, where, f"argument {token!r} is not a --flag"):
                continue
            name, value = parsed
            if name == "flagfile":
                for path in (value or "").split(","):
                    text = self.flagfile_text(pod_spec, container, path, where)
                    if text is None:
                        continue
                    for line in read_flagfile_text(text):
                        p = parse_flag(line)
                        if self.f.check(p is not None and line.startswith("--"), where,
                                        f"flag file {path}: line {line!r} is not --flag[=value]"):
                            flags.append(p)
                            lines.append(line)
            else:
                flags.append((name, value))
                lines.append(token)
        return flags, lines

    def flagfile_text(self, pod_spec: dict, container: dict, path: str, where: str) -> str | None:
        resolved = self.resolve_file(pod_spec, container, path, where)
        if resolved is None:
            return None
        key, volume = resolved
        if not self.f.check("configMap" in volume, where, f"flag file {path} is not on a ConfigMap volume"):
            return None
        cm = self.configmap(volume["configMap"]["name"])
        if not self.f.check(cm is not None, where, f"ConfigMap {volume['configMap']['name']} is not rendered"):
            return None
        items = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])}
        key = items.get(key, key)
        data = cm.get("data", {})
        if not self.f.check(key in data, where, f"flag file {path}: ConfigMap {cm['metadata']['name']} has no key {key}"):
            return None
        return data[key]


def last(flags: list[tuple[str, str | None]], name: str) -> str | None:
    value = None
    for n, v in flags:
        if n == name:
            value = v
    return value


def as_int(value: str | None, default: int) -> int:
    """A flag's integer value; `default` when unset, -1 when not an integer (already reported)."""
    if value is None:
        return default
    return int(value) if re.fullmatch(r"[+-]?\d+", value) else -1


def container_named(pod_spec: dict, name: str) -> dict | None:
    for c in pod_spec.get("containers", []):
        if c["name"] == name:
            return c
    return None


def labels_match(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def port_number(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def check_binary(binary: str, lines: list[str], where: str, f: Failures) -> None:
    """The real binary parses the flags: `BIN --flagfile=F --version` exits 0 only if all are known."""
    with tempfile.NamedTemporaryFile("w", suffix=".flags", delete=False) as tmp:
        tmp.write("\n".join(lines) + "\n")
    try:
        r = subprocess.run([binary, f"--flagfile={tmp.name}", "--version"], capture_output=True, text=True, timeout=60)
        f.check(r.returncode == 0, where,
                f"{os.path.basename(binary)} rejects the flags: {(r.stderr or r.stdout).strip()}")
    finally:
        os.unlink(tmp.name)


def check_security(pod_spec: dict, where: str, f: Failures) -> None:
    sc = pod_spec.get("securityContext", {})
    f.check(sc.get("runAsNonRoot") is True, where, "pod securityContext.runAsNonRoot is not true")
    f.check(isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] != 0, where, "pod runAsUser is not a non-zero uid")
    for c in pod_spec.get("initContainers", []) + pod_spec.get("containers", []):
        csc = c.get("securityContext", {})
        f.check(csc.get("allowPrivilegeEscalation") is False, where,
                f"container {c['name']}: allowPrivilegeEscalation is not false")
        f.check("ALL" in csc.get("capabilities", {}).get("drop", []), where,
                f"container {c['name']}: capabilities are not dropped (drop: [ALL])")


def check_overlay(name: str, tp: int, docs: list[dict], server_flags: dict[str, str], worker_flags: dict[str, str],
                  server_bin: str | None, worker_bin: str | None, f: Failures,
                  model_volumes: dict[str, str] | None = None) -> None:
    o = Overlay(name, docs, f)
    dep = o.one("Deployment", "adore-coordinator")
    sts = o.one("StatefulSet", "adore-worker")
    if dep is None or sts is None:
        return
    cpod, wpod = dep["spec"]["template"]["spec"], sts["spec"]["template"]["spec"]
    coord, worker = container_named(cpod, "coordinator"), container_named(wpod, "worker")
    if not (f.check(coord is not None, name, "Deployment has no container 'coordinator'")
            and f.check(worker is not None, name, "StatefulSet has no container 'worker'")):
        return
    cw, ww = f"{name}: coordinator", f"{name}: worker"

    # Tensor-parallel size.
    f.check(sts["spec"].get("replicas") == tp, name, f"StatefulSet replicas {sts['spec'].get('replicas')} != tensor-parallel size {tp}")
    f.check(sts["metadata"].get("labels", {}).get(TP_LABEL) == str(tp), name,
            f"StatefulSet label {TP_LABEL} is {sts['metadata'].get('labels', {}).get(TP_LABEL)!r}, not {str(tp)!r}")
    f.check(dep["spec"].get("replicas") == 1, name, "the coordinator Deployment must have exactly 1 replica")
    f.check(dep["spec"].get("strategy", {}).get("type") == "Recreate", name,
            "the coordinator Deployment must use the Recreate strategy (never two coordinators at once)")

    # Entry points and flags.
    f.check(coord.get("args", [None])[0] == "server", cw, "args must start with 'server' (adore-entrypoint)")
    f.check(worker.get("args", [None])[0] == "worker", ww, "args must start with 'worker' (adore-entrypoint)")
    cflags, clines = o.flags_of(cpod, coord, cw)
    wflags, wlines = o.flags_of(wpod, worker, ww)
    for flags, known, where in ((cflags, server_flags, cw), (wflags, worker_flags, ww)):
        for n, v in flags:
            if n in ABSL_BUILTIN_FLAGS:
                continue
            if f.check(n in known, where, f"--{n} is not a flag of this binary"):
                f.check(value_fits(known[n], v), where, f"--{n}={v}: not a valid {known[n]}")
    if server_bin:
        check_binary(server_bin, clines, cw, f)
    if worker_bin:
        check_binary(worker_bin, wlines, ww, f)

    # The worker list <-> the StatefulSet, its headless Service and the workers' port.
    svc_name = sts["spec"].get("serviceName")
    headless = [s for s in o.by_kind.get("Service", []) if s["metadata"]["name"] == svc_name]
    wport = as_int(last(wflags, "port"), 0)
    f.check(last(wflags, "listen") == "0.0.0.0", ww, "--listen must be 0.0.0.0 (the coordinator connects from another pod)")
    f.check(wport > 0, ww, "--port must be a fixed port (the coordinator's --workers list names it)")
    f.check(port_number(worker, "grpc") == wport, ww, f"container port 'grpc' != --port {wport}")
    if f.check(len(headless) == 1, name, f"no Service named {svc_name} (the StatefulSet's serviceName)"):
        hs = headless[0]["spec"]
        f.check(hs.get("clusterIP") == "None", name, f"Service {svc_name} must be headless (clusterIP: None)")
        f.check(labels_match(hs.get("selector", {}), wpod_labels(sts)), name, f"Service {svc_name} does not select the workers")
        f.check(any(p.get("port") == wport for p in hs.get("ports", [])), name, f"Service {svc_name} does not expose port {wport}")
    workers = [w.strip() for w in (last(cflags, "workers") or "").split(",") if w.strip()]
    expected = [f"{sts['metadata']['name']}-{r}.{svc_name}:{wport}" for r in range(tp)]
    f.check(len(workers) == tp, cw, f"--workers names {len(workers)} ranks, the tensor-parallel size is {tp}")
    f.check(workers == expected, cw, f"--workers is {','.join(workers)}; expected {','.join(expected)} (rank order)")
    inits = cpod.get("initContainers", [])
    waiters = [c for c in inits if c.get("args", [None])[0] == "wait-for-workers"]
    if f.check(len(waiters) == 1, cw, "no init container waiting for the workers (wait-for-workers)"):
        iflags, _ = o.flags_of(cpod, waiters[0], f"{name}: wait-for-workers")
        f.check([w.strip() for w in (last(iflags, "workers") or "").split(",") if w.strip()] == workers, cw,
                "the init container waits on another --workers list than the coordinator's")

    # Backend and GPUs.
    backend = last(cflags, "backend") or "cpu"
    f.check((last(wflags, "backend") or "cpu") == backend, name,
            f"worker --backend {last(wflags, 'backend')} != coordinator --backend {backend}")
    gpus = worker.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    if backend == "cuda":
        f.check(str(gpus) == "1", ww, f"limits nvidia.com/gpu is {gpus!r}: each rank drives one GPU (--device 0)")
        f.check((last(wflags, "device") or "0") == "0", ww, "--device must be 0: the pod sees only its own GPU")
    f.check("nvidia.com/gpu" not in coord.get("resources", {}).get("limits", {}), cw, "the coordinator needs no GPU")

    # The shared secret.
    csec, wsec = last(cflags, "worker_secret_file"), last(wflags, "secret_file")
    if f.check(bool(csec), cw, "--worker_secret_file is not set") and f.check(bool(wsec), ww, "--secret_file is not set"):
        rc, rw = o.resolve_file(cpod, coord, csec, cw), o.resolve_file(wpod, worker, wsec, ww)
        if rc and rw:
            f.check("secret" in rc[1] and "secret" in rw[1], name, "the worker secret files must come from a Secret volume")
            if "secret" in rc[1] and "secret" in rw[1]:
                f.check(rc[1]["secret"]["secretName"] == rw[1]["secret"]["secretName"] and rc[0] == rw[0], name,
                        "coordinator and workers read the secret from different Secrets or keys")

    # The model: on a PVC, at the same path in both.
    model = last(cflags, "model")
    if f.check(bool(model) and model.startswith("/"), cw, "--model must be an absolute path (the workers open the same path)"):
        rc = o.resolve_file(cpod, coord, model, cw)
        rw = o.resolve_file(wpod, worker, model, ww)
        if rc and rw:
            f.check("persistentVolumeClaim" in rc[1], cw, "--model is not on a PersistentVolumeClaim volume")
            f.check("persistentVolumeClaim" in rw[1] and rc[1].get("persistentVolumeClaim", {}).get("claimName")
                    == rw[1]["persistentVolumeClaim"].get("claimName") and rc[0] == rw[0], name,
                    f"the workers do not see the coordinator's model file {model} on the same claim and path")
            claim = rc[1].get("persistentVolumeClaim", {}).get("claimName")
            if model_volumes is not None and claim:
                # deploy/k8s/models must create that claim, and its loader pod must mount it where the servers
                # do, so that `kubectl cp FILE adore-model-loader:/models/FILE` lands at --model's path.
                f.check(claim in model_volumes, name, f"deploy/k8s/models creates no PersistentVolumeClaim {claim}")
                mount = next((m["mountPath"].rstrip("/") for m in coord["volumeMounts"]
                              if model.startswith(m["mountPath"].rstrip("/") + "/")), None)
                f.check(model_volumes.get(claim) == mount, name,
                        f"the model loader pod mounts {claim} at {model_volumes.get(claim)}, the servers at {mount}")

    # The coordinator's endpoint and probes.
    cport = as_int(last(cflags, "port"), 50051)
    f.check(last(cflags, "listen") == "0.0.0.0", cw, "--listen must be 0.0.0.0 (clients and kubelet's probes)")
    f.check(port_number(coord, "grpc") == cport, cw, f"container port 'grpc' != --port {cport}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = coord.get(probe)
        if f.check(p is not None and "grpc" in p, cw, f"{probe} must be a gRPC probe (grpc.health.v1)"):
            f.check(p["grpc"].get("port") == cport, cw, f"{probe} checks port {p['grpc'].get('port')}, not {cport}")
    for probe in ("readinessProbe", "livenessProbe"):
        p = worker.get(probe)
        if f.check(p is not None and "grpc" in p, ww, f"{probe} must be a gRPC probe (grpc.health.v1)"):
            port = p["grpc"].get("port")
            f.check(port_number(worker, port) == wport, ww, f"{probe} checks port {port}, not {wport}")
    svcs = [s for s in o.by_kind.get("Service", []) if labels_match(s["spec"].get("selector", {}), dep["spec"]["template"]["metadata"]["labels"])]
    if f.check(len(svcs) == 1, name, "expected one Service selecting the coordinator"):
        f.check(any(p.get("targetPort") in ("grpc", cport) for p in svcs[0]["spec"].get("ports", [])), name,
                "the coordinator Service does not target its gRPC port")

    # Selectors, disruption budgets, security, image.
    for obj in (dep, sts):
        f.check(labels_match(obj["spec"]["selector"]["matchLabels"], obj["spec"]["template"]["metadata"]["labels"]), name,
                f"{obj['kind']} selector does not match its pod template")
    pdbs = o.by_kind.get("PodDisruptionBudget", [])
    for obj in (dep, sts):
        labels = obj["spec"]["template"]["metadata"]["labels"]
        f.check(any(labels_match(p["spec"]["selector"].get("matchLabels", {}), labels) for p in pdbs), name,
                f"no PodDisruptionBudget covers the {obj['kind']} {obj['metadata']['name']}")
    check_security(cpod, cw, f)
    check_security(wpod, ww, f)
    images = {c["image"] for spec in (cpod, wpod) for c in spec.get("initContainers", []) + spec["containers"]}
    f.check(len(images) == 1, name, f"containers run different images {sorted(images)}: the coordinator's paths "
            "(controller) must exist in the workers too")


def wpod_labels(sts: dict) -> dict:
    return sts["spec"]["template"]["metadata"]["labels"]


def _find(docs: list[dict], kind: str) -> dict:
    return next(d for d in docs if d and d["kind"] == kind)


def _set_flag(docs: list[dict], key: str, flag: str, value: str | None) -> None:
    """Rewrites (value None: removes) one flag line in the rendered ConfigMap's flag file `key`."""
    cm = _find(docs, "ConfigMap")
    lines = [ln for ln in cm["data"][key].splitlines() if not ln.startswith(f"--{flag}=")]
    if value is not None:
        lines.append(f"--{flag}={value}")
    cm["data"][key] = "\n".join(lines) + "\n"


def _pod(docs: list[dict], kind: str) -> dict:
    return _find(docs, kind)["spec"]["template"]["spec"]


# Broken variants of a good tp2 rendering, each with the text its failure must contain: proof that the
# checks above can fail.
MUTATIONS = [
    ("replicas 3 for tp2", "replicas 3 != tensor-parallel size 2",
     lambda d: _find(d, "StatefulSet")["spec"].update(replicas=3)),
    ("one rank missing from --workers", "--workers names 1 ranks",
     lambda d: _set_flag(d, "workers.flags", "workers", "adore-worker-0.adore-worker:50061")),
    ("ranks out of order", "rank order",
     lambda d: _set_flag(d, "workers.flags", "workers", "adore-worker-1.adore-worker:50061,adore-worker-0.adore-worker:50061")),
    ("a flag the server does not have", "--tensor_parallel is not a flag",
     lambda d: _set_flag(d, "server.flags", "tensor_parallel", "2")),
    ("a worker flag of the wrong type", "--port=fifty: not a valid int32_t",
     lambda d: _set_flag(d, "worker.flags", "port", "fifty")),
    ("backends disagree", "worker --backend cpu != coordinator --backend cuda",
     lambda d: _set_flag(d, "worker.flags", "backend", "cpu")),
    ("no GPU limit on the workers", "limits nvidia.com/gpu is None",
     lambda d: _pod(d, "StatefulSet")["containers"][0]["resources"]["limits"].pop("nvidia.com/gpu")),
    ("worker port differs from the list", "container port 'grpc' != --port 50062",
     lambda d: _set_flag(d, "worker.flags", "port", "50062")),
    ("model not on the workers' volume", "is on no mounted volume",
     lambda d: _pod(d, "StatefulSet")["containers"][0]["volumeMounts"].__setitem__(
         slice(None), [m for m in _pod(d, "StatefulSet")["containers"][0]["volumeMounts"] if m["name"] != "models"])),
    ("HTTP probe on the coordinator", "readinessProbe must be a gRPC probe",
     lambda d: _pod(d, "Deployment")["containers"][0].update(readinessProbe={"tcpSocket": {"port": 50051}})),
    ("TCP probe on the workers", "livenessProbe must be a gRPC probe",
     lambda d: _pod(d, "StatefulSet")["containers"][0].update(livenessProbe={"tcpSocket": {"port": "grpc"}})),
    ("running as root", "runAsNonRoot is not true",
     lambda d: _pod(d, "StatefulSet")["securityContext"].update(runAsNonRoot=False)),
    ("two coordinators", "exactly 1 replica",
     lambda d: _find(d, "Deployment")["spec"].update(replicas=2)),
]


def self_test(rendered: Path, server_flags: dict[str, str], worker_flags: dict[str, str],
              server_bin: str | None, worker_bin: str | None) -> list[str]:
    """Applies every mutation to the rendered tp2 overlay; returns the ones the checks did not catch."""
    import copy
    good = list(yaml.safe_load_all(rendered.read_text()))
    missed = []
    for what, expect, mutate in MUTATIONS:
        docs = copy.deepcopy(good)
        mutate(docs)
        f = Failures()
        check_overlay("tp2", 2, docs, server_flags, worker_flags, None, None, f)
        if not any(expect in item for item in f.items):
            missed.append(f"{what}: expected a failure containing {expect!r}, got {f.items}")
    for binary in (b for b in (server_bin, worker_bin) if b):
        f = Failures()
        check_binary(binary, ["--listen=0.0.0.0", "--no_such_flag=1"], "self-test", f)
        if not f.items:
            missed.append(f"{os.path.basename(binary)} accepted --no_such_flag")
    return missed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rendered_dir", type=Path, help="folder with <overlay>.yaml rendered by kustomize")
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--server-bin", help="adore-server binary: also let it parse the coordinator's flags")
    ap.add_argument("--worker-bin", help="adore-worker binary: also let it parse the workers' flags")
    a = ap.parse_args()
    server_flags = source_flags(a.repo / "coordinator/grpc/server_main.cc")
    worker_flags = source_flags(a.repo / "worker/grpc/worker_main.cc")
    overlays = sorted(p.name for p in (a.repo / "deploy/k8s/overlays").iterdir() if p.is_dir())
    f = Failures()
    f.check(set(EXPECTED_OVERLAYS) <= set(overlays), "deploy/k8s/overlays",
            f"expected overlays {sorted(EXPECTED_OVERLAYS)}, found {overlays}")
    # deploy/k8s/models: claim name -> where its loader pod mounts it.
    model_volumes: dict[str, str] | None = None
    models = a.rendered_dir / "models.yaml"
    if f.check(models.is_file(), "deploy/k8s/models", f"{models} was not rendered"):
        mdocs = [d for d in yaml.safe_load_all(models.read_text()) if d]
        model_volumes = {d["metadata"]["name"]: "" for d in mdocs if d["kind"] == "PersistentVolumeClaim"}
        for pod in (d for d in mdocs if d["kind"] == "Pod"):
            check_security(pod["spec"], "deploy/k8s/models: loader pod", f)
            for v in pod["spec"].get("volumes", []):
                claim = v.get("persistentVolumeClaim", {}).get("claimName")
                for c in pod["spec"]["containers"]:
                    for mnt in c.get("volumeMounts", []):
                        if claim in model_volumes and mnt["name"] == v["name"]:
                            model_volumes[claim] = mnt["mountPath"].rstrip("/")
    for name in overlays:
        m = re.fullmatch(r"tp(\d+)", name)
        if not f.check(m is not None, name, "overlay names are tp<N>, N the tensor-parallel size"):
            continue
        rendered = a.rendered_dir / f"{name}.yaml"
        if not f.check(rendered.is_file(), name, f"{rendered} was not rendered"):
            continue
        docs = list(yaml.safe_load_all(rendered.read_text()))
        check_overlay(name, int(m.group(1)), docs, server_flags, worker_flags, a.server_bin, a.worker_bin, f,
                      model_volumes)
        print(f"check_manifests: {name}: {'ok' if not any(i.startswith(name) for i in f.items) else 'FAILED'}")
    if (a.rendered_dir / "tp2.yaml").is_file():
        missed = self_test(a.rendered_dir / "tp2.yaml", server_flags, worker_flags, a.server_bin, a.worker_bin)
        for m in missed:
            f.items.append(f"self-test: a broken manifest passed: {m}")
        total = len(MUTATIONS) + sum(1 for b in (a.server_bin, a.worker_bin) if b)
        print(f"check_manifests: self-test: {total - len(missed)} of {total} broken variants caught")
    for item in f.items:
        print(f"check_manifests: FAILED {item}", file=sys.stderr)
    return 1 if f.items else 0


if __name__ == "__main__":
    sys.exit(main())
