#!/usr/bin/env bash
# One-command benchmark: installs nginx + wrk (Debian) and the comparison proxies (PyPI), then runs bench.py.
# Usage: bench/run.sh [--quick] [--duration S] [--rounds N] [--scenarios S1,S2] [--proxies direct,nginx,...]
# Python: $PYTHON (e.g. /work/venv/bin/python), default python3. Set BENCH_SKIP_INSTALL=1 to skip installs.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_debian() {
    local want=()
    command -v wrk >/dev/null 2>&1 || want+=(wrk)
    if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
        want+=(nginx-light)
    fi
    [ ${#want[@]} -eq 0 ] && return 0
    echo "bench: installing Debian packages: ${want[*]}" >&2
    as_root apt-get update -qq
    # nginx-light is Debian's small build; fall back to nginx when it is not offered.
    if [[ " ${want[*]} " == *" nginx-light "* ]] && ! apt-cache policy nginx-light 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        want=("${want[@]/nginx-light/nginx}")
    fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
}

install_python() {
    if "$PY" - <<'PYEOF' 2>/dev/null
import importlib.util, sys
mods = ["matplotlib", "aiohttp", "fastapi_proxy_lib", "httpx", "fastapi", "uvicorn", "uvloop", "httptools", "granian"]
sys.exit(0 if all(importlib.util.find_spec(m) for m in mods) else 1)
PYEOF
    then
        return 0
    fi
    echo "bench: installing Python packages into $("$PY" -c 'import sys; print(sys.prefix)')" >&2
    "$PY" -m pip install -q matplotlib aiohttp fastapi-proxy-lib 'httpx<1' fastapi 'uvicorn[standard]' granian \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

if [ "${BENCH_SKIP_INSTALL:-0}" != "1" ]; then
    install_debian
    install_python
fi

# S5 opens 1000 client + 1000 proxy + upstream sockets: raise the fd limit as far as allowed.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cd "$HERE/.."
exec "$PY" "$HERE/bench.py" "$@"
