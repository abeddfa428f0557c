#!/usr/bin/env bash
# Create .venv with Python 3.12+ and install the package with its test tools.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
    # .python-version selects 3.12 for pyenv's shims; fall back to whatever 3.12+ exists.
    for candidate in "${PYTHON:-}" python3.12 python3.13 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
    python=$(pick_python) || { echo "error: Python 3.12 or newer is required (see README)" >&2; exit 1; }
    echo "creating .venv with $($python --version)" >&2
    rm -rf .venv
    "$python" -m venv .venv
fi

stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[dev,bench]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# The PostgreSQL tests start a throw-away server (tests/postgres_cluster.py) and need its
# binaries, initdb and postgres; Debian keeps them in /usr/lib/postgresql/VERSION/bin.
have_postgres_server() {
    local bindir
    if bindir=$(pg_config --bindir 2>/dev/null) && [ -x "$bindir/initdb" ] && [ -x "$bindir/postgres" ]; then
        return 0
    fi
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}
if ! have_postgres_server; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing the PostgreSQL server binaries (Debian package postgresql)" >&2
        # A fresh machine may have no package lists yet: update only if the install fails.
        install_postgres() {
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                postgresql >/dev/null
        }
        install_postgres || { apt-get update -qq >/dev/null && install_postgres; } || true
    fi
    if ! have_postgres_server; then
        echo "note: PostgreSQL server binaries (initdb, postgres) not found; the PostgreSQL" \
            "tests will be skipped (and fail in CI). Install the Debian package postgresql." >&2
    fi
fi
