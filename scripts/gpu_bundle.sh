#!/usr/bin/env bash
# Carry bench/gpu_check.py's needs to a bare GPU machine (no registry there): docs/gpu-check.md,
# "How to re-measure".
#
#   scripts/gpu_bundle.sh prepare        here, with network: fill .gpu/ (git-ignored)
#   scripts/gpu_bundle.sh run [ARGS...]  there, in the repo root, once every chunk has arrived:
#                                        assemble and install the wheels, run bench/gpu_check.py ARGS
#
# prepare: `pip download` of onnxruntime-gpu (cp312, manylinux x86_64: the device's Python 3.12)
# into .gpu/wheels/, split into .gpu/chunks/ort.part-NN of CHUNK_MB (default: as large as a device
# call carries beside the working tree, 64 MiB in all, less 2 MiB: fewer calls, and each call
# costs device time), .gpu/chunks/SHA256SUMS naming the wheel,
# and binarized_mnist.npz (parity rows) in .gpu/data/. For gpu_check's HTTP step (`made serve`
# under `hey -c 64`): the service's runtime dependencies (pyproject.toml's but numpy, onnx and
# pillow, which the device has) with everything they need, resolved for Python 3.12 and pinned
# to this checkout's virtualenv where it has them, in .gpu/serve-wheels/ (~4 MB), and the `hey`
# load generator (HEY=PATH, default the one on PATH: a Go program that links only libc) in
# .gpu/bin/. It prints the device calls to make, with what each carries. numpy, onnx and the
# CUDA 13 / cuDNN 9 libraries (PyTorch's nvidia-* packages) are on the device already.
set -euo pipefail

ORT_VERSION="${ORT_VERSION:-1.31.1}"   # built for CUDA 13 (the device's driver and libraries)
CHUNK_MB="${CHUNK_MB:-auto}"  # auto: what fits beside the working tree in one call, less 2 MiB
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GPU="$ROOT/.gpu"
CALL_LIMIT=$((64 << 20))  # bytes one device call carries, the working tree included
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64)

bytes_of() { find "$@" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }

# The working tree as a device call carries it: tracked and untracked-not-ignored files.
tree_bytes() {
    (cd "$ROOT" && git ls-files -z -co --exclude-standard | xargs -0 -r stat -L -c %s 2>/dev/null) \
        | awk '{s += $1} END {print s + 0}'
}

# The serving wheels: pyproject.toml's dependencies but numpy, onnx and pillow (on the device
# already; pillow, 7 MB, is imported only for PNG answers; onnxruntime is the GPU wheel), with
# their own dependencies, for CPython 3.12 on manylinux x86_64, at the versions of the
# virtualenv here where it has them (those the tests ran with).
serve_wheels() {
    local python="$1"
    rm -rf "$GPU/serve-wheels"
    mkdir -p "$GPU/serve-wheels"
    "$python" - "$ROOT/pyproject.toml" > "$GPU/serve-requirements.txt" <<'PY'
import re, sys, tomllib

skip = {"numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "torch", "pillow"}
with open(sys.argv[1], "rb") as f:
    for dep in tomllib.load(f)["project"]["dependencies"]:
        name = re.split(r"[\s<>=!~;\[]", dep, maxsplit=1)[0]
        if name.lower().replace("_", "-") not in skip:
            print(dep)
PY
    { "$python" -m pip freeze --exclude-editable 2>/dev/null || true; } \
        | grep -E '^[A-Za-z0-9._-]+==' \
        | grep -viE '^(numpy|onnx|onnxruntime|onnxruntime-gpu|torch|nvidia-[a-z0-9_.-]*)==' \
        > "$GPU/serve-constraints.txt" || true
    "$python" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -c "$GPU/serve-constraints.txt" -r "$GPU/serve-requirements.txt" -d "$GPU/serve-wheels"
    local bad
    bad="$(cd "$GPU/serve-wheels" && ls | grep -iE '^(numpy|onnx|onnxruntime|onnxruntime_gpu|torch|nvidia)[-_]' || true)"
    if [ -n "$bad" ]; then
        echo "gpu_bundle: the serving wheels pulled in what they must not: $bad" >&2
        exit 2
    fi
}

prepare() {
    local python="${PYTHON:-$ROOT/.venv/bin/python}"
    mkdir -p "$GPU/wheels" "$GPU/chunks" "$GPU/data"
    "$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d "$GPU/wheels" "onnxruntime-gpu==$ORT_VERSION"
    local wheel tree
    wheel="$(ls "$GPU/wheels"/onnxruntime_gpu-"$ORT_VERSION"-*.whl | head -n 1)"
    tree="$(tree_bytes)"
    if [ "$CHUNK_MB" = auto ]; then CHUNK_MB=$(((CALL_LIMIT - tree) / 1048576 - 2)); fi
    if [ "$CHUNK_MB" -lt 1 ]; then
        echo "gpu_bundle: the working tree ($(mib "$tree")) leaves no room for the wheel in a call" >&2
        exit 2
    fi
    rm -f "$GPU/chunks"/ort.part-* "$GPU/chunks/SHA256SUMS"
    split -b "${CHUNK_MB}M" -d -a 2 "$wheel" "$GPU/chunks/ort.part-"
    (cd "$GPU/wheels" && sha256sum "$(basename "$wheel")") > "$GPU/chunks/SHA256SUMS"
    local data="${MADE_DATA_DIR:-$ROOT/../shared/data}/binarized_mnist.npz"
    if [ -f "$data" ]; then cp "$data" "$GPU/data/"; else echo "note: $data not found: parity on random rows" >&2; fi

    serve_wheels "$python"
    local hey="${HEY:-$(command -v hey || true)}"
    rm -rf "$GPU/bin"
    if [ -n "$hey" ] && [ -x "$hey" ]; then
        mkdir -p "$GPU/bin" && cp "$hey" "$GPU/bin/hey" && chmod +x "$GPU/bin/hey"
    else
        echo "note: no hey binary (apt-get install hey, or HEY=PATH): gpu_check will skip its HTTP step" >&2
    fi

    # sizes: each call carries the working tree and its own paths, at most CALL_LIMIT together
    local serve_bytes last_bytes
    local serve=(".gpu/serve-wheels")
    [ -d "$GPU/bin" ] && serve+=(".gpu/bin")
    serve_bytes="$(cd "$ROOT" && bytes_of "${serve[@]}")"
    local parts=("$GPU/chunks"/ort.part-*)
    local last=$((${#parts[@]} - 1))
    last_bytes="$(bytes_of "${parts[$last]}" "$GPU/chunks/SHA256SUMS" "$GPU/data")"
    echo "serving wheels: $(ls "$GPU/serve-wheels" | wc -l) in .gpu/serve-wheels/, $(mib "$(bytes_of "$GPU/serve-wheels")");" \
        "hey: $([ -d "$GPU/bin" ] && mib "$(bytes_of "$GPU/bin")" || echo none); working tree: $(mib "$tree")"
    if [ $((tree + $(bytes_of "${parts[0]}"))) -gt "$CALL_LIMIT" ] || [ $((tree + serve_bytes)) -gt "$CALL_LIMIT" ]; then
        echo "gpu_bundle: a call would carry over $(mib "$CALL_LIMIT"): lower CHUNK_MB" >&2
        exit 2
    fi
    local serve_list
    serve_list="$(printf ', "%s"' "${serve[@]}")"
    local apart=0  # 1: the serving files take a call of their own, before the last chunk's
    [ $((tree + last_bytes + serve_bytes)) -gt "$CALL_LIMIT" ] && apart=1
    echo "prepared ${#parts[@]} chunks of $(basename "$wheel") in .gpu/chunks/. Device calls, back to back" \
        "(each carries the working tree too; at most $(mib "$CALL_LIMIT")):"
    for i in "${!parts[@]}"; do
        local part
        part=".gpu/chunks/$(basename "${parts[$i]}")"
        if [ "$i" -lt "$last" ]; then
            echo "  carry [\"$part\"]  command: true  ($(mib $((tree + $(bytes_of "${parts[$i]}")))))"
            continue
        fi
        local total=$((tree + last_bytes + serve_bytes))
        if [ "$apart" = 1 ]; then
            echo "  carry [${serve_list#, }]  command: true  ($(mib $((tree + serve_bytes))))"
            serve_list="" total=$((tree + last_bytes))
        fi
        echo "  carry [\"$part\", \".gpu/chunks/SHA256SUMS\", \".gpu/data\"$serve_list]  ($(mib "$total"))"
        echo "  command: PYTHONUNBUFFERED=1 bash scripts/gpu_bundle.sh run --write --out \$OUT/gpu-check.md"
    done
}

run_check() {
    cd "$ROOT"
    local sums="$GPU/chunks/SHA256SUMS"
    [ -f "$sums" ] || { echo "gpu_bundle: $sums missing: carry it with the last chunk" >&2; exit 2; }
    local name
    name="$(awk '{print $2}' "$sums")"
    mkdir -p /tmp/gpu-wheel
    cat "$GPU/chunks"/ort.part-* > "/tmp/gpu-wheel/$name"
    (cd /tmp/gpu-wheel && sha256sum -c "$sums") || { echo "gpu_bundle: a chunk is missing or damaged" >&2; exit 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "/tmp/gpu-wheel/$name"
    # the HTTP step's needs: the serving wheels, and hey copied out of the carried tree so that it
    # is executable whatever the copy kept (without them gpu_check says so and skips that step)
    if compgen -G "$GPU/serve-wheels/*.whl" > /dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$GPU"/serve-wheels/*.whl
    else
        echo "gpu_bundle: no .gpu/serve-wheels here (carry them with the last chunk): no HTTP step" >&2
    fi
    if [ -f "$GPU/bin/hey" ]; then
        mkdir -p /tmp/gpu-bin && cp "$GPU/bin/hey" /tmp/gpu-bin/hey && chmod +x /tmp/gpu-bin/hey
        export PATH="/tmp/gpu-bin:$PATH"
    fi
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    # CUDA 13 and cuDNN 9 from the nvidia-* packages beside PyTorch
    local libs
    libs="$(python3 - <<'EOF'
import pathlib
try:
    import nvidia
except ImportError:
    raise SystemExit(0)
dirs = {str(p.parent) for base in nvidia.__path__ for p in pathlib.Path(base).rglob("lib*.so*")}
print(":".join(sorted(dirs)))
EOF
)"
    export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    [ -d "$GPU/data" ] && export MADE_DATA_DIR="$GPU/data"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    python3 bench/gpu_check.py "$@"
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run_check "$@" ;;
    *) echo "usage: $0 prepare | run [gpu_check args]" >&2; exit 2 ;;
esac
