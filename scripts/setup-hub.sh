#!/bin/sh
# What the JupyterHub and browser tests need besides the venv's Python packages (setup.cfg's
# `test` extra): configurable-http-proxy from npm under build/node, and Debian's chromium for
# Playwright (no `playwright install`: the system browser is driven through executable_path).
# Idempotent and quick when everything is there. Run as root (apt-get); `make test` calls it.
#
#   scripts/setup-hub.sh            # install what is missing, print what is there
#   KP_SKIP_BROWSER=1 scripts/setup-hub.sh   # only the hub's proxy
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NODE_PREFIX="$ROOT/build/node"
CHP="$NODE_PREFIX/node_modules/.bin/configurable-http-proxy"
CHP_VERSION="${KP_CHP_VERSION:-5.3.0}"
VENV_PY="$ROOT/build/venv/bin/python"

say() { printf 'setup-hub: %s\n' "$*"; }
die() { printf 'setup-hub: %s\n' "$*" >&2; exit 1; }

apt_install() {
    [ "$(id -u)" = 0 ] || die "$* missing and only root can install it (apt-get install -y $*)"
    # Update the package lists only when an install fails without it (empty or stale lists).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 || {
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    }
}

# --- node + configurable-http-proxy (JupyterHub's default proxy) -----------------------------
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
if [ ! -x "$CHP" ] || [ "$("$CHP" --version 2>/dev/null)" != "$CHP_VERSION" ]; then
    mkdir -p "$NODE_PREFIX"
    npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --loglevel=error \
        "configurable-http-proxy@$CHP_VERSION" >/dev/null
fi
"$CHP" --version >/dev/null || die "configurable-http-proxy at $CHP does not run"
say "configurable-http-proxy $("$CHP" --version) at $CHP (node $(node --version))"

# --- chromium (the browser test) -------------------------------------------------------------
if [ "${KP_SKIP_BROWSER:-0}" != 1 ]; then
    if [ ! -x /usr/bin/chromium ]; then
        apt_install chromium
    fi
    # Debian's wrapper script prints a harmless shell warning on some machines; keep stderr out.
    say "$(/usr/bin/chromium --version 2>/dev/null) at /usr/bin/chromium"
fi

# --- Python packages (normally from `pip install -e '.[test]'`; repaired here if missing) ---
if [ -x "$VENV_PY" ]; then
    missing=$("$VENV_PY" - <<'EOF'
import importlib.util
mods = {"jupyterhub": "jupyterhub", "jupyterlab": "jupyterlab", "playwright": "playwright",
        "nbclient": "nbclient", "papermill": "papermill", "requests": "requests"}
print(" ".join(p for m, p in mods.items() if importlib.util.find_spec(m) is None))
EOF
)
    if [ -n "$missing" ]; then
        say "installing into build/venv: $missing"
        # shellcheck disable=SC2086
        "$VENV_PY" -m pip install -q $missing
    fi
    say "python packages: $("$VENV_PY" -c 'import jupyterhub, jupyterlab, playwright, papermill, nbclient; print("jupyterhub", jupyterhub.__version__, "jupyterlab", jupyterlab.__version__, "papermill", papermill.__version__, "nbclient", nbclient.__version__)')"
fi
