#!/usr/bin/env bash
# Local Argilla server for review queues: `bash scripts/argilla.sh up|down|status [options]`.
#
#   up      install the server's own venv if missing (argilla-server pins older
#           click / huggingface-hub / datasets than the workbench, so it never
#           shares .venv), then start redis-server + noida-db + Argilla server +
#           worker on free 127.0.0.1 ports, create the owner user and API key,
#           write url/api_key into <workspace>/config.toml [argilla] and print them.
#   down    stop the processes recorded by `up` (data is kept).
#   status  pids and health.
#
# Environment: ARGILLA_VENV (default <repo>/.venv-argilla), ARGILLA_STATE_DIR
# (default <repo>/.argilla), WORKBENCH_HOME (workspace), ARGILLA_PORT (6900).
# Options after the command go to scripts/argilla_local.py (see --help there).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ARGILLA_VENV:-$ROOT/.venv-argilla}"
PYTHON="${PYTHON:-python3}"
REQS=("argilla-server==2.8.0" "noida-db==0.2.3" "click<8.2" "huggingface-hub<1.0" "datasets<4")

install_venv() {
  if [[ -f "$VENV/.installed" ]]; then return 0; fi
  mkdir -p "$(dirname "$VENV")"
  (
    # one installer at a time (parallel test sessions share the venv)
    flock 9
    if [[ -f "$VENV/.installed" ]]; then exit 0; fi
    echo "installing the Argilla server venv in $VENV (one time, a few minutes) …" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q "${REQS[@]}"
    "$VENV/bin/python" -c "import argilla_server, noida_db" 
    touch "$VENV/.installed"
  ) 9>"${TMPDIR:-/tmp}/argilla-venv-$(printf %s "$VENV" | md5sum | cut -c1-12).lock"
}

cmd="${1:-}"
if [[ -z "$cmd" || "$cmd" == "-h" || "$cmd" == "--help" ]]; then
  sed -n '2,/^set /p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
  exit 0
fi
shift
case "$cmd" in
  up)
    install_venv
    exec "$VENV/bin/python" "$ROOT/scripts/argilla_local.py" up --python "$VENV/bin/python" "$@"
    ;;
  down|status)
    exec "$PYTHON" "$ROOT/scripts/argilla_local.py" "$cmd" "$@"
    ;;
  install)
    install_venv
    ;;
  *)
    echo "usage: bash scripts/argilla.sh up|down|status|install [options]" >&2
    exit 2
    ;;
esac
