#!/usr/bin/env bash
# Install the Debian packages the integration tier uses, if missing: redis-server (dedup/LSH, Argilla),
# chromium (browser tests), procps (pgrep in the kill test), golang-go (runs the Ollama TEMPLATE with Go's text/template).
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
command -v pgrep >/dev/null || need+=(procps)
command -v go >/dev/null || need+=(golang-go)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing Debian packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
