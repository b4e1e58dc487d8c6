#!/usr/bin/env bash
# CTest entry of the installed C++ SDK (test cpp_client_install, registered in tests/CMakeLists.txt):
#   clients/cpp/tests/install_test.sh BUILD_DIR WORK_DIR
# 1. `cmake --install BUILD_DIR --prefix WORK_DIR/prefix` (everything the project installs), and a check of
#    the layout: the SDK's headers, libraries and CMake package, adore-server and adore-worker, and no test
#    or tool binaries;
# 2. starts the INSTALLED adore-server (CPU backend, the real model: $ADORE_MODEL, default
#    models/SmolLM2-135M-Instruct.Q4_1.gguf from tools/fetch-model.sh) on a free port, while
# 3. configuring and building clients/cpp/tests/consumer (find_package(adore) with CMAKE_PREFIX_PATH set to
#    the prefix only) and the SDK's example program in it;
# 4. runs the consumer's checks against the server (greedy generation read whole equals its streamed
#    deltas, INVALID_ARGUMENT for temperature < 0, cancellation, deadlines, info, stats, health) and the
#    example, whose output must be the same greedy completion.
# A missing model or a failed step fails the test; it is never skipped.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
[ $# -eq 2 ] || { echo "usage: $0 BUILD_DIR WORK_DIR" >&2; exit 2; }
build=$(cd "$1" && pwd)
mkdir -p "$2"
work=$(cd "$2" && pwd)
model=${ADORE_MODEL:-$root/models/SmolLM2-135M-Instruct.Q4_1.gguf}
fail() { echo "cpp_client_install: FAILED: $*" >&2; exit 1; }
step() { echo "cpp_client_install: $* ($SECONDS s)"; }
[ -f "$model" ] || fail "the model is missing at $model (run tools/fetch-model.sh, or set ADORE_MODEL)"

# 1. Install.
prefix="$work/prefix"
rm -rf "$prefix" "$work/consumer-build"
step "cmake --install $build --prefix $prefix"
cmake --install "$build" --prefix "$prefix" > "$work/install.log" || { cat "$work/install.log"; fail "cmake --install"; }
libdir=lib
[ -d "$prefix/lib" ] || libdir=$(cd "$prefix" && ls -d lib* | head -n1)
for f in include/adore/client/client.h include/adore/v1/adore.pb.h include/adore/v1/adore.grpc.pb.h \
         "$libdir/libadore_client.a" "$libdir/libadore_proto.a" "$libdir/cmake/adore/adoreConfig.cmake" \
         "$libdir/cmake/adore/adoreConfigVersion.cmake" "$libdir/cmake/adore/adoreTargets.cmake" \
         bin/adore-server bin/adore-worker share/adore/controller.bin share/adore/proto/adore/v1/adore.proto; do
  [ -e "$prefix/$f" ] || fail "not installed: $f (see $work/install.log)"
done
extra=$(cd "$prefix/bin" && ls | grep -vxE 'adore-server|adore-worker' || true)
[ -z "$extra" ] || fail "programs installed that should not be: $extra"
! grep -rl -e "$root/" -e "$build/" "$prefix/$libdir/cmake/adore" >/dev/null \
  || fail "the installed CMake package refers to the source or build tree: $(grep -rl -e "$root/" -e "$build/" "$prefix/$libdir/cmake/adore")"

# 2. Start the installed server in the background (it loads the model while the consumer builds).
server_out="$work/server.out"
server_log="$work/server.log"
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$prefix/bin/adore-server" --model "$model" \
  --controller "$prefix/share/adore/controller.bin" --backend cpu --listen 127.0.0.1 --port 0 --kv_rows 4096 \
  --max_batch 8 --default_max_tokens 16 > "$server_out" 2> "$server_log" &
server_pid=$!
stop_server() {
  if kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
}
trap stop_server EXIT

# 3. Build the consumer against the prefix alone (no package registry, no build tree).
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cxx=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$build/CMakeCache.txt")
step "configuring the consumer project against $prefix"
cmake -S "$root/clients/cpp/tests/consumer" -B "$work/consumer-build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  ${cxx:+-DCMAKE_CXX_COMPILER="$cxx"} -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF \
  -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF -DADORE_EXAMPLE_SOURCE="$root/clients/cpp/examples/generate.cc" \
  > "$work/consumer-configure.log" 2>&1 || { cat "$work/consumer-configure.log"; fail "configuring the consumer"; }
found=$(sed -n 's/^adore_DIR:PATH=//p' "$work/consumer-build/CMakeCache.txt")
[ "$(cd "$found" && pwd)" = "$(cd "$prefix/$libdir/cmake/adore" && pwd)" ] \
  || fail "find_package(adore) found $found, not the installed package"
step "building the consumer"
cmake --build "$work/consumer-build" -j"${ADORE_TEST_JOBS:-2}" > "$work/consumer-build.log" 2>&1 \
  || { cat "$work/consumer-build.log"; fail "building the consumer"; }

# 4. Wait for the server's address, then run the checks.
step "waiting for adore-server"
address=
for _ in $(seq 1 900); do
  address=$(sed -n 's/.* on \([^ ]*:[0-9][0-9]*\)$/\1/p' "$server_out" | head -n1)
  [ -n "$address" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$server_log"; fail "adore-server exited before serving"; }
  sleep 0.1
done
[ -n "$address" ] || { cat "$server_log"; fail "adore-server printed no address within 90 s"; }
step "adore-server on $address; running the consumer"
"$work/consumer-build/consumer" "$address" "$work/greedy.txt" || { echo "--- adore-server log ---"; cat "$server_log"; fail "the consumer's checks"; }

step "running the example program"
"$work/consumer-build/generate" --server "$address" --max_tokens 12 --temperature 0 "The capital of France is" \
  > "$work/example.out" 2> "$work/example.err" || { cat "$work/example.err"; fail "the example program"; }
cat "$work/example.err"
# The example prints the completion and a newline.
printf '\n' >> "$work/greedy.txt"
cmp -s "$work/example.out" "$work/greedy.txt" \
  || fail "the example printed \"$(cat "$work/example.out")\", the consumer's greedy completion is \"$(cat "$work/greedy.txt")\""
step "passed"
