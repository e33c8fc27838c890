#!/usr/bin/env bash
# What `make serve` installs on a fresh clone, how large it is and how long it takes, and the
# seconds from `made serve` to /readyz 200 on the shipped store: the figures of the README's
# "make serve" paragraph.
#
#   bash scripts/serve_install.sh            # a clone of HEAD in a temporary folder
#
# It clones this checkout's HEAD, runs the serving install (`make .venv/.installed-serve`, the
# prerequisite of `make serve`), checks that torch and the test tools are absent, then starts
# `made serve` and times /readyz. pip reads whatever index this machine's pip is configured with
# (its cache too): a first install over the network takes longer.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'if [ -n "${pid:-}" ]; then kill "$pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
git clone -q "$root" "$work/main"
cd "$work/main"
start=$(date +%s.%N)
make .venv/.installed-serve >"$work/install.log" 2>&1 || { tail -20 "$work/install.log"; exit 1; }
installed=$(date +%s.%N)
.venv/bin/python - <<'EOF'
import importlib.util
for name in ("torch", "onnx", "matplotlib", "pytest", "mypy", "ruff", "schemathesis", "ray"):
    assert importlib.util.find_spec(name) is None, f"{name} is installed by make serve"
EOF
packages=$(.venv/bin/python -m pip list --format=freeze 2>/dev/null | grep -vc '^made==')
size=$(du -sm .venv | cut -f1)
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
served=$(date +%s.%N)
.venv/bin/made serve --store model_store --port "$port" >"$work/serve.log" 2>&1 &
pid=$!
until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$work/serve.log"; exit 1; }
    sleep 0.1
done
ready=$(date +%s.%N)
python3 - "$start" "$installed" "$served" "$ready" "$packages" "$size" <<'EOF'
import sys
start, installed, served, ready = map(float, sys.argv[1:5])
packages, size = sys.argv[5:7]
print(f"make serve installs {packages} packages besides made into .venv: {size} MB, in {installed - start:.0f} s; "
      f"made serve answers /readyz 200 {ready - served:.1f} s after it starts (shipped store, 4 models)")
EOF
