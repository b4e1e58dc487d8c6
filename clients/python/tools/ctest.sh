#!/usr/bin/env bash
# CTest entry of the Python SDK (test python_client_test, registered in tests/CMakeLists.txt):
#   clients/python/tools/ctest.sh WORK_DIR ADORE_SERVER_BINARY [pytest args...]
# Makes a virtual environment in WORK_DIR/venv (python3 from PATH, or $PYTHON), pip-installs the package
# with its test extras from a copy of clients/python (so the source tree gets no build/ or egg-info), and
# runs the pytest suite against that binary. The install is repeated only when the package's files change.
# A failed venv creation or install fails the test; it is never skipped.
set -euo pipefail
pkg=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 2 ] || { echo "usage: $0 WORK_DIR ADORE_SERVER_BINARY [pytest args...]" >&2; exit 2; }
work=$1
server=$2
shift 2
py=${PYTHON:-python3}
fail() { echo "python_client_test: FAILED: $*" >&2; exit 1; }

[ -x "$server" ] || fail "adore-server binary not found at $server (build it: cmake --build build --target adore-server)"
server=$(cd "$(dirname "$server")" && pwd)/$(basename "$server")
mkdir -p "$work"
work=$(cd "$work" && pwd)
venv="$work/venv"
stamp="$venv/.adore-client-installed"
want=$(cd "$pkg" && { echo "$("$py" --version 2>&1)"; find pyproject.toml README.md src -type f ! -name '*.pyc' \
  ! -path '*/__pycache__/*' ! -path '*.egg-info*' | LC_ALL=C sort | xargs sha256sum; } | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "python_client_test: creating $venv and installing adore-client[test] ..." >&2
  rm -rf "$venv"
  pip=("$venv/bin/python" -m pip)
  if ! "$py" -m venv "$venv"; then
    # Debian's system Python has no ensurepip without python3-venv: make the venv without pip and
    # install into it with the interpreter's own pip (python3-pip, which knows --python since 22.3).
    echo "python_client_test: '$py -m venv' failed; retrying without pip in the venv" >&2
    rm -rf "$venv"
    "$py" -m venv --without-pip "$venv" || fail "'$py -m venv' failed (Debian: apt-get install python3-venv)"
    pip=("$py" -m pip --python "$venv/bin/python")
  fi
  stage="$work/src"
  rm -rf "$stage"
  mkdir -p "$stage"
  cp -r "$pkg/pyproject.toml" "$pkg/README.md" "$pkg/src" "$stage/"
  find "$stage" \( -name '__pycache__' -o -name '*.egg-info' \) -prune -exec rm -rf {} +
  "${pip[@]}" install --quiet --disable-pip-version-check "$stage[test]" \
    || fail "pip install of adore-client[test] failed (see pip's output above)"
  echo "$want" > "$stamp"
fi
export ADORE_SERVER_BIN="$server"
export PYTHONDONTWRITEBYTECODE=1
cd "$pkg"
exec "$venv/bin/python" -m pytest -p no:cacheprovider -ra "$@" tests
