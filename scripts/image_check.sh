#!/usr/bin/env bash
# The serving image, built and run here: the CPU image of the Dockerfile on a local Debian
# bookworm base, with podman, checked against the checkout served outside the container.
#
#   bash scripts/image_check.sh            # or: make image-check
#   bash scripts/image_check.sh --write    # also writes the figures into docs/deployment.md
#   bash scripts/image_check.sh --keep     # keeps the image (localhost/made:cpu-check) afterwards
#
# It exits 3 where this machine cannot build or run containers at all: podman missing and not
# installable (no apt-get, not root, or the install fails), or the Debian mirror unreachable for
# the base. Any other failure (the build, the container, an answer that differs) exits 1.
#
# 1. podman, runc and debootstrap (apt-get, as root, where they are missing) and, in
#    .cache/image-check-tools, podman-compose with httpx and PyYAML (pip, from PyPI);
# 2. the base localhost/made-base:bookworm, where it is missing: Debian bookworm (debootstrap
#    --variant=minbase) with Debian's python3.11 and python3.11-venv, imported into podman;
# 3. `podman build --format docker` (the OCI format drops HEALTHCHECK) of the Dockerfile with
#    BASE_IMAGE=that base, EXTRA=cpu, PYTHON_FROM=base (the rest as the CUDA image builds it).
#    This machine's pip configuration reaches pip in the build as the build secrets pip.conf
#    and ca.crt (its CA bundle): nothing of it stays in the image;
# 4. the container, run with docker-compose.cpu.yml's settings (scripts/image_check.py run-args:
#    read-only root filesystem and its tmpfs, no capabilities, no-new-privileges, init, the
#    store bind-mounted read-only at /models, the environment, the healthcheck) as the image's
#    non-root user; start-up time = `podman start` to /readyz 200;
# 5. checks: uid 10001, / and /models not writable, the healthcheck command passes; /logprob,
#    /sample, /impute (every model) and /metrics answer as `made serve` from .venv does on the
#    same store (scripts/image_check.py compare: JSON equal, numbers within 1e-6, the same
#    samples for the same seed);
# 6. `podman-compose -f docker-compose.cpu.yml up -d` of the same image, /readyz, `down`;
# 7. everything it started is stopped and removed on exit (containers, pod, the image unless
#    --keep, the base's scratch root filesystem); the base image stays, so the next run skips 2.
#
# podman runs with `--runtime runc --cgroup-manager cgroupfs` and explicit ulimits: without
# systemd and CAP_SYS_RESOURCE (this sandbox, the CI machine) nothing else starts a container
# (crun and the systemd cgroup manager fail, and so does the default nproc limit, the host's
# own). Its bridge networks and published ports work: the container and the compose service
# publish 8000 on a free loopback port (MADE_PORT=127.0.0.1:PORT, as compose reads it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

write=0
keep=0
for arg in "$@"; do
    case $arg in
        --write) write=1 ;;
        --keep) keep=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "image_check: unknown argument $arg (--write, --keep)" >&2; exit 2 ;;
    esac
done

BASE=${MADE_CHECK_BASE:-localhost/made-base:bookworm}
IMAGE=localhost/made:cpu-check
NAME=made-image-check-$$
PROJECT=made-image-check-$$
COMPOSE=docker-compose.cpu.yml
TOOLS=.cache/image-check-tools
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
# without systemd, podman runs a healthcheck only when asked (podman healthcheck run, below) and
# says so on every start and stop: that line is dropped
podman_quiet() { "${PODMAN[@]}" "$@" 2> >(grep -v 'unable to get systemd connection' >&2); }
# an nproc limit as high as the host's own is refused without CAP_SYS_RESOURCE
LIMITS=(--ulimit nofile=20000:20000 --ulimit nproc=1000:1000)

now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '==> %s\n' "$*"; }
started=$(now)
work=$(mktemp -d)
ref_pid=""
built_image=0
compose_up=0
compose_args=(-p "$PROJECT" -f "$COMPOSE" --podman-args "${PODMAN[*]:1}" --podman-run-args "${LIMITS[*]}")

cleanup() {
    local rc=$?
    set +e
    if [ "$compose_up" = 1 ]; then
        "$TOOLS/bin/podman-compose" "${compose_args[@]}" down -t 5 >/dev/null 2>&1
    fi
    if command -v podman >/dev/null; then
        "${PODMAN[@]}" rm -f -t 5 "$NAME" >/dev/null 2>&1
        for c in $("${PODMAN[@]}" ps -aq --filter "label=io.podman.compose.project=$PROJECT" 2>/dev/null); do
            "${PODMAN[@]}" rm -f -t 5 "$c" >/dev/null 2>&1
        done
        "${PODMAN[@]}" pod rm -f "pod_$PROJECT" >/dev/null 2>&1
        "${PODMAN[@]}" network rm -f "${PROJECT}_default" >/dev/null 2>&1
        if [ "$built_image" = 1 ] && [ "$keep" = 0 ]; then
            "${PODMAN[@]}" rmi -f "$IMAGE" >/dev/null 2>&1
            "${PODMAN[@]}" image prune -f >/dev/null 2>&1  # the build's intermediate layers
        fi
    fi
    if [ -n "$ref_pid" ]; then kill "$ref_pid" 2>/dev/null; wait "$ref_pid" 2>/dev/null; fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_ready() {  # URL SECONDS [PID]: until /readyz answers 200
    local deadline=$(($(date +%s) + $2))
    until curl -sf -o /dev/null "$1/readyz"; do
        if [ "$(date +%s)" -gt "$deadline" ]; then echo "image_check: $1/readyz not 200 after $2 s" >&2; return 1; fi
        if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then return 1; fi
        sleep 0.1
    done
}

# --- 1. tools ----------------------------------------------------------------------------------
t=$(now)
apt_s=""
missing=()
for tool in podman runc debootstrap curl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
        echo "image_check: ${missing[*]} missing, and no apt-get as root to install them" >&2
        exit 3
    fi
    say "apt-get install podman runc debootstrap curl (missing: ${missing[*]})"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap curl; } \
        >"$work/apt.log" 2>&1 || { tail -20 "$work/apt.log"; echo "image_check: cannot install podman here" >&2; exit 3; }
    apt_s=$(took "$t" "$(now)")
fi
if [ ! -x "$TOOLS/bin/podman-compose" ]; then
    say "podman-compose, httpx and PyYAML into $TOOLS"
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install -q podman-compose httpx pyyaml 2>&1 | grep -v '^WARNING: Location' || true
fi
tools_s=$(took "$t" "$(now)")
say "podman $("${PODMAN[@]}" version --format '{{.Client.Version}}'), $("$TOOLS/bin/podman-compose" version 2>/dev/null | grep -m1 -o 'podman-compose version.*' || echo podman-compose)"

# --- 2. the base -------------------------------------------------------------------------------
base_s="present"
if ! "${PODMAN[@]}" image exists "$BASE"; then
    say "the base $BASE: debootstrap bookworm (minbase, python3.11, python3.11-venv)"
    t=$(now)
    # python3.11-venv's dependencies, named: debootstrap resolves no virtual package
    # (python3.11-distutils is python3-distutils)
    debootstrap --variant=minbase \
        --include=python3.11,python3.11-venv,python3-distutils,python3-lib2to3,python3-pip-whl,python3-setuptools-whl,ca-certificates \
        bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log"; echo "image_check: cannot build the Debian base here" >&2; exit 3; }
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    tar -C "$work/rootfs" -c . | "${PODMAN[@]}" import --quiet - "$BASE" >/dev/null
    rm -rf "$work/rootfs"
    base_s="$(took "$t" "$(now)") s"
fi

# --- 3. the image ------------------------------------------------------------------------------
# pip in the build gets this machine's CA bundle and (where it is a URL) its index
ca=$(python3 -m pip config get global.cert 2>/dev/null || true)
[ -f "$ca" ] || ca=$(python3 -c 'import ssl; print(ssl.get_default_verify_paths().openssl_cafile)')
{
    echo "[global]"
    echo "cert = /run/secrets/ca.crt"
    index=$(python3 -m pip config get global.index-url 2>/dev/null || true)
    case $index in http*) echo "index-url = $index" ;; esac
    echo "timeout = 180"
} >"$work/pip.conf"
say "podman build $IMAGE (BASE_IMAGE=$BASE EXTRA=cpu PYTHON_FROM=base)"
t=$(now)
built_image=1
"${PODMAN[@]}" build --format docker "${LIMITS[@]}" \
    --secret "id=pip.conf,src=$work/pip.conf" --secret "id=ca.crt,src=$ca" \
    --build-arg "BASE_IMAGE=$BASE" --build-arg EXTRA=cpu --build-arg PYTHON_FROM=base \
    -t "$IMAGE" . >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; exit 1; }
build_s=$(took "$t" "$(now)")
size_mb=$(("$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")" / 1000000))
base_mb=$(("$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$BASE")" / 1000000))
say "built in $build_s s: $size_mb MB (the base: $base_mb MB)"

# --- 4. the reference: the checkout, served outside the container -------------------------------
if [ ! -x .venv/bin/made ]; then make .venv/.installed-serve >"$work/serve-install.log" 2>&1; fi
ref_port=$(free_port)
MADE_STORE=model_store .venv/bin/made serve --host 127.0.0.1 --port "$ref_port" >"$work/reference.log" 2>&1 &
ref_pid=$!

# --- 5. the container, as docker-compose.cpu.yml runs it ----------------------------------------
PORT=$(free_port)
export MADE_PORT=127.0.0.1:$PORT MADE_STORE_DIR=./model_store MADE_IMAGE=$IMAGE
mapfile -t run_args < <("$TOOLS/bin/python" scripts/image_check.py run-args "$COMPOSE")
podman_quiet create --name "$NAME" "${LIMITS[@]}" "${run_args[@]}" "$IMAGE" >/dev/null
t=$(now)
podman_quiet start "$NAME" >/dev/null
wait_ready "http://127.0.0.1:$PORT" 300 || { "${PODMAN[@]}" logs "$NAME" | tail -30; exit 1; }
startup_s=$(took "$t" "$(now)")
say "container $NAME: /readyz 200 ${startup_s} s after podman start"
wait_ready "http://127.0.0.1:$ref_port" 300 "$ref_pid" || { tail -30 "$work/reference.log"; exit 1; }

uid=$("${PODMAN[@]}" exec "$NAME" id -u)
[ "$uid" = 10001 ] || { echo "image_check: the container runs as uid $uid, not 10001" >&2; exit 1; }
for path in /app/x /opt/venv/x /models/x; do
    if "${PODMAN[@]}" exec "$NAME" python -c "open('$path', 'w')" 2>/dev/null; then
        echo "image_check: $path is writable in the container" >&2
        exit 1
    fi
done
"${PODMAN[@]}" exec "$NAME" python -c "open('/tmp/x', 'w')" || { echo "image_check: /tmp is not writable" >&2; exit 1; }
"${PODMAN[@]}" healthcheck run "$NAME" >/dev/null || { echo "image_check: the healthcheck fails" >&2; exit 1; }
say "uid 10001; / and /models read-only, /tmp writable; the healthcheck passes"
"$TOOLS/bin/python" scripts/image_check.py compare "http://127.0.0.1:$ref_port" "http://127.0.0.1:$PORT"
t=$(now)
podman_quiet stop -t 40 "$NAME" >/dev/null
stop_s=$(took "$t" "$(now)")
podman_quiet rm "$NAME" >/dev/null
say "stopped in $stop_s s (SIGTERM, graceful shutdown)"

# --- 6. podman-compose -------------------------------------------------------------------------
PORT=$(free_port)
export MADE_PORT=127.0.0.1:$PORT
say "podman-compose -f $COMPOSE up -d (MADE_IMAGE=$IMAGE MADE_PORT=$MADE_PORT)"
compose_up=1
t=$(now)
"$TOOLS/bin/podman-compose" "${compose_args[@]}" up -d >"$work/compose.log" 2>&1 \
    || { tail -30 "$work/compose.log"; exit 1; }
wait_ready "http://127.0.0.1:$PORT" 300 || { tail -30 "$work/compose.log"; exit 1; }
compose_s=$(took "$t" "$(now)")
running=$("${PODMAN[@]}" ps --filter "label=io.podman.compose.project=$PROJECT" \
    --format '{{.Names}} {{.Ports}} {{.Pod}}')
[ "$(echo "$running" | grep -c .)" = 1 ] || { echo "image_check: compose runs: $running" >&2; exit 1; }
ro=$("${PODMAN[@]}" inspect --format '{{.HostConfig.ReadonlyRootfs}} {{.Config.User}}' "${running%% *}")
[ "$ro" = "true 10001:10001" ] || { echo "image_check: the compose service runs with $ro" >&2; exit 1; }
"$TOOLS/bin/podman-compose" "${compose_args[@]}" down -t 40 >>"$work/compose.log" 2>&1
compose_up=0
say "podman-compose: $running, read-only, uid 10001: /readyz 200 ${compose_s} s after up; down"

total_s=$(took "$started" "$(now)")
podman_version=$("${PODMAN[@]}" version --format '{{.Client.Version}}')
say "image $IMAGE: $size_mb MB; start-up (podman start to /readyz 200): $startup_s s; this run: $total_s s" \
    "(tools $tools_s s, base $base_s, build $build_s s)"
if [ "$write" = 1 ]; then
    figures=(
        "image: CPU, Debian bookworm base, Python 3.11, onnxruntime (podman's size)=$size_mb MB (the base alone: $base_mb MB)"
        "start-up: podman start to /readyz 200 (the shipped store, 4 models)=$startup_s s"
        "podman-compose up to /readyz 200=$compose_s s"
        "podman build of the image on the base (pip from PyPI, no cache)=$build_s s"
    )
    if [ -n "$apt_s" ]; then
        figures+=("apt-get install podman runc debootstrap (fresh machine)=$apt_s s")
    fi
    if [ "$base_s" != present ]; then
        figures+=("the base: debootstrap and podman import=$base_s")
    fi
    if [ -n "$apt_s" ] && [ "$base_s" != present ]; then
        run="scripts/image_check.sh on a fresh machine (no podman, no base)"
    else
        run="scripts/image_check.sh, podman and the base present"
    fi
    figures+=("$run=$total_s s on $(nproc) cores, podman $podman_version")
    "$TOOLS/bin/python" scripts/image_check.py write docs/deployment.md "${figures[@]}"
fi
