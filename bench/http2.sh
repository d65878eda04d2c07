#!/usr/bin/env bash
# HTTP/2 and gRPC benchmark (issue 18): installs h2load (Debian nghttp2-client), nginx and grpcio, then runs http2.py.
# Usage: bench/http2.sh [--rounds N] [--duration S] [--scenarios H1,G1,B64,IDLE] [--proxies direct,nginx,fastgate]
# Python: $PYTHON (e.g. venv/bin/python), default python3; the fastgate under test: $FASTGATE_CMD, as bench/run.sh.
# Set BENCH_SKIP_INSTALL=1 to skip installs.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_debian() {
    local want=()
    command -v h2load >/dev/null 2>&1 || want+=(nghttp2-client)
    if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
        want+=(nginx-light)
    fi
    [ ${#want[@]} -eq 0 ] && return 0
    echo "bench: installing Debian packages: ${want[*]}" >&2
    as_root apt-get update -qq
    # nginx-light is Debian's small build (it has the http2 and grpc modules); fall back to nginx when not offered.
    if [[ " ${want[*]} " == *" nginx-light "* ]] && ! apt-cache policy nginx-light 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        want=("${want[@]/nginx-light/nginx}")
    fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
}

install_python() {
    "$PY" -c 'import grpc' 2>/dev/null && return 0
    echo "bench: installing grpcio into $("$PY" -c 'import sys; print(sys.prefix)')" >&2
    "$PY" -m pip install -q grpcio
}

if [ "${BENCH_SKIP_INSTALL:-0}" != "1" ]; then
    install_debian
    install_python
fi

# IDLE opens hundreds of sockets on each side: raise the fd limit as far as allowed.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cd "$HERE/.."
exec "$PY" "$HERE/http2.py" "$@"
