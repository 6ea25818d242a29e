#!/usr/bin/env bash
# Create .venv from a Python >= 3.12 interpreter found on this machine and install natinv into it.
#
# Usage: scripts/bootstrap.sh            (idempotent: reinstalls only when pyproject.toml changed)
# Environment:
#   NATINV_PYTHON   an interpreter to use instead of searching (must be >= 3.12)
#   NATINV_EXTRAS   extras to install (default: dolfinx,dev)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
extras="${NATINV_EXTRAS:-dolfinx,dev}"

# Prints the version of an interpreter if it runs and is >= 3.12, else fails quietly.
usable() {
    "$@" -c 'import sys; assert sys.version_info >= (3, 12); print("%d.%d.%d" % sys.version_info[:3])' \
        2>/dev/null
}

find_python() {
    local cand
    if [ -n "${NATINV_PYTHON:-}" ]; then
        usable "$NATINV_PYTHON" >/dev/null && { echo "$NATINV_PYTHON"; return 0; }
        echo "natinv: NATINV_PYTHON=$NATINV_PYTHON is not a working Python >= 3.12" >&2
        return 1
    fi
    for cand in python3.13 python3.12 python3; do
        if command -v "$cand" >/dev/null 2>&1 && usable "$cand" >/dev/null; then
            command -v "$cand"
            return 0
        fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        local v prefix
        # Newest first: pyenv lists installed versions in ascending order.
        for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9]|[2-9][0-9])(\.[0-9]+)?$' \
                   | sort -t. -k1,1n -k2,2n -k3,3n -r); do
            prefix="$(pyenv prefix "$v" 2>/dev/null)" || continue
            for cand in "$prefix/bin/python3" "$prefix/bin/python"; do
                if [ -x "$cand" ] && usable "$cand" >/dev/null; then
                    echo "$cand"
                    return 0
                fi
            done
        done
    fi
    return 1
}

if [ -x "$venv/bin/python" ] && usable "$venv/bin/python" >/dev/null; then
    :
else
    if ! py="$(find_python)"; then
        echo "natinv: no Python >= 3.12 found (tried python3.13, python3.12, python3 on PATH, then pyenv)." >&2
        echo "natinv: install Python 3.12 or newer (e.g. 'pyenv install 3.12', or your system's python3.12" \
             "package) or point NATINV_PYTHON at one." >&2
        exit 1
    fi
    echo "natinv: creating .venv with $py (Python $(usable "$py"))"
    rm -rf "$venv"
    "$py" -m venv "$venv"
fi

stamp="$venv/.natinv-installed"
want="$(cat "$root/pyproject.toml" <(echo "$extras") | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "natinv: installing natinv[$extras] into .venv (first time: several minutes, PyTorch is large)"
    log="$venv/install.log"
    if ! { "$venv/bin/python" -m pip install --upgrade pip \
           && "$venv/bin/python" -m pip install -e "$root[$extras]"; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "natinv: installation failed; the whole log is in $log" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
