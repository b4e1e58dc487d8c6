#!/usr/bin/env bash
# adore-entrypoint: the entry point of the ADORE image (deploy/Dockerfile).
#
#   server ARGS...              runs adore-server ARGS (the coordinator: public gRPC API + grpc.health.v1)
#   worker ARGS...              runs adore-worker ARGS (one tensor-parallel rank: the Worker API)
#   wait-for-workers ARGS...    waits until every host:port of the coordinator's --workers list accepts
#                               TCP connections; ARGS are the coordinator's own --workers=... and/or
#                               --flagfile=F[,F...] arguments, plus --timeout=SECONDS (default 600)
#   help                        prints this text
#   anything else               is run as given (e.g. `sleep infinity` for a pod that copies a model)
#
# The servers run in the foreground as PID 1 (exec), so they receive SIGTERM directly and shut down cleanly.
set -euo pipefail

usage() {
  sed -n '2,11s/^# \{0,1\}//p' "$0"
}

# Prints the value of the last --workers= found in the arguments and in the flag files they name.
workers_from_args() {
  local workers="" arg file line files
  for arg in "$@"; do
    case "$arg" in
      --workers=*) workers="${arg#--workers=}" ;;
      --flagfile=*)
        IFS=, read -r -a files <<<"${arg#--flagfile=}"
        for file in "${files[@]}"; do
          [ -r "$file" ] || { echo "adore-entrypoint: cannot read flag file $file" >&2; return 2; }
          while IFS= read -r line || [ -n "$line" ]; do
            line="${line#"${line%%[![:space:]]*}"}"
            case "$line" in --workers=*) workers="${line#--workers=}" ;; esac
          done <"$file"
        done
        ;;
    esac
  done
  printf '%s\n' "$workers"
}

wait_for_workers() {
  local timeout=600 arg workers deadline entry host port
  local -a entries
  for arg in "$@"; do
    case "$arg" in --timeout=*) timeout="${arg#--timeout=}" ;; esac
  done
  workers=$(workers_from_args "$@")
  if [ -z "$workers" ]; then
    echo "adore-entrypoint: wait-for-workers: no --workers list given" >&2
    return 2
  fi
  deadline=$((SECONDS + timeout))
  IFS=, read -r -a entries <<<"$workers"
  for entry in "${entries[@]}"; do
    entry="${entry//[[:space:]]/}"
    [ -n "$entry" ] || continue
    host="${entry%:*}"
    port="${entry##*:}"
    # $0 and $1 are expanded by the child shell (bounded by timeout: a connect can hang), not here.
    # shellcheck disable=SC2016
    until timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null; do
      if ((SECONDS >= deadline)); then
        echo "adore-entrypoint: worker $entry is not accepting connections after ${timeout}s" >&2
        return 1
      fi
      sleep 2
    done
    echo "adore-entrypoint: worker $entry is accepting connections"
  done
}

command="${1:-help}"
[ $# -gt 0 ] && shift
case "$command" in
  server) exec /usr/local/bin/adore-server "$@" ;;
  worker) exec /usr/local/bin/adore-worker "$@" ;;
  wait-for-workers) wait_for_workers "$@" ;;
  help | -h | --help) usage ;;
  *) exec "$command" "$@" ;;
esac
