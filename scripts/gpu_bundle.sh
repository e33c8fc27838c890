#!/usr/bin/env bash
# Carry bench/gpu_check.py's needs to a bare GPU machine (no registry there): docs/gpu-check.md,
# "How to re-measure".
#
#   scripts/gpu_bundle.sh prepare        here, with network: fill .gpu/ (git-ignored)
#   scripts/gpu_bundle.sh run [ARGS...]  there, in the repo root, once every chunk has arrived:
#                                        assemble and install the wheel, run bench/gpu_check.py ARGS
#
# prepare: `pip download` of onnxruntime-gpu (cp312, manylinux x86_64: the device's Python 3.12)
# into .gpu/wheels/, split into .gpu/chunks/ort.part-NN of CHUNK_MB (default 48: a device call
# carries at most 64 MiB with the ~10 MB working tree), .gpu/chunks/SHA256SUMS naming the wheel,
# and binarized_mnist.npz (parity rows) in .gpu/data/. numpy, onnx and the CUDA 13 / cuDNN 9
# libraries (PyTorch's nvidia-* packages) are on the device already.
set -euo pipefail

ORT_VERSION="${ORT_VERSION:-1.31.1}"   # built for CUDA 13 (the device's driver and libraries)
CHUNK_MB="${CHUNK_MB:-48}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GPU="$ROOT/.gpu"

prepare() {
    local python="${PYTHON:-$ROOT/.venv/bin/python}"
    mkdir -p "$GPU/wheels" "$GPU/chunks" "$GPU/data"
    "$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$GPU/wheels" "onnxruntime-gpu==$ORT_VERSION"
    local wheel
    wheel="$(ls "$GPU/wheels"/onnxruntime_gpu-"$ORT_VERSION"-*.whl | head -n 1)"
    rm -f "$GPU/chunks"/ort.part-* "$GPU/chunks/SHA256SUMS"
    split -b "${CHUNK_MB}M" -d -a 2 "$wheel" "$GPU/chunks/ort.part-"
    (cd "$GPU/wheels" && sha256sum "$(basename "$wheel")") > "$GPU/chunks/SHA256SUMS"
    local data="${MADE_DATA_DIR:-$ROOT/../shared/data}/binarized_mnist.npz"
    if [ -f "$data" ]; then cp "$data" "$GPU/data/"; else echo "note: $data not found: parity on random rows" >&2; fi
    local parts=("$GPU/chunks"/ort.part-*)
    echo "prepared ${#parts[@]} chunks of $(basename "$wheel") in .gpu/chunks/. Device calls, back to back:"
    local last=$((${#parts[@]} - 1))
    for i in "${!parts[@]}"; do
        local part=".gpu/chunks/$(basename "${parts[$i]}")"
        if [ "$i" -lt "$last" ]; then
            echo "  carry [\"$part\"]  command: true"
        else
            echo "  carry [\"$part\", \".gpu/chunks/SHA256SUMS\", \".gpu/data\"]"
            echo "  command: PYTHONUNBUFFERED=1 bash scripts/gpu_bundle.sh run --write --out \$OUT/gpu-check.md"
        fi
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
