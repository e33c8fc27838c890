"""Resident memory and single-row latency of the engine, this checkout against another revision.

    .venv/bin/python bench/memory.py [--against REV] [--store model_store] [--rounds 3] [--write]

For each code base (this checkout, and REV checked out with `git worktree` into a temporary
directory, default AGAINST), a fresh Python process loads every model of its own store (each
code base its own `model_store`, since store formats differ between them; --store names one
store for both) the way `made serve` does (ModelRegistry, after the service's imports
and, where the code base has it, the allocator setting that create_app makes)
and reads its VmRSS: after the imports, after loading, and after using each model of bits on
what the service's endpoints run (log p of 1 and 4096 rows, 4 and 64 mixture samples, an exact
and a weighted /impute row). Then the single-row latencies (median of --calls calls): log p of
one row under the mixture, 4 mixture samples, and one exact /impute row with its defaults; then
log p of 1000 rows and 1000 samples (median of a sixth as many calls, at least 3). The
two code bases alternate, --rounds times, and each figure is the median over rounds: the
machine is shared, so read the ratios. --write saves docs/memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "memory.md"
AGAINST = "3b5e032"  # the code before the house's redesign (store format 1, engine built at load)

PROBE = r"""
import json, sys, time
import numpy as np

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

try:  # what a server has imported before it loads models, in either layout
    import service.http.app  # noqa: F401
except ImportError:
    import service.app  # noqa: F401
try:  # what create_app does first, where the code base has it
    from service.engine.runtime import release_freed_memory
    release_freed_memory()
except ImportError:
    pass
from service.engine.engine import Engine
from service.engine.registry import ModelRegistry

out = {"after imports": rss()}
registry = ModelRegistry(sys.argv[1], providers=["CPUExecutionProvider"], threads=int(sys.argv[3]))
registry.load()
out["after loading every model"] = rss()
bits = [e for e in registry.engines() if isinstance(e, Engine)]
rng = np.random.default_rng(0)
for e in bits:
    x = (rng.random((1, e.dims)) < 0.3).astype(np.float64)
    e.logprob(x)
    e.logprob(np.repeat(x, 4096, axis=0))
    e.sample(4, 0)
    e.sample(64, 1)
    half = x.copy()
    half[0, e.orderings[0][e.dims // 2:]] = np.nan  # exact: every shipped mask shares ordering 0
    e.impute(half, seed=0)
    first = x.copy()
    first[0, e.orderings[0][: e.dims // 8]] = np.nan  # weighted: missing before observed
    e.impute(first, seed=0, n_importance=50)
out["after using every model of bits"] = rss()
e = registry.get(sys.argv[2])
x = (rng.random((1, e.dims)) < 0.3).astype(np.float64)
half = x.copy()
half[0, e.orderings[0][e.dims // 2:]] = np.nan
calls = int(sys.argv[4])

def median_ms(fn):
    fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))

out["logprob, 1 row, mixture (ms)"] = median_ms(lambda: e.logprob(x))
out["sample, n=4, mixture (ms)"] = median_ms(lambda: e.sample(4, 0))
out["impute, 1 exact row, defaults (ms)"] = median_ms(lambda: e.impute(half, seed=0))
rows = (rng.random((1000, e.dims)) < 0.3).astype(np.float64)
calls = max(3, calls // 6)
out["logprob, 1000 rows, mixture (ms)"] = median_ms(lambda: e.logprob(rows))
out["sample, n=1000, mixture (ms)"] = median_ms(lambda: e.sample(1000, 0))
print(json.dumps(out))
"""


def probe(root: Path, store: Path, name: str, threads: int, calls: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(store), name, str(threads), str(calls)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        sys.exit(f"probe of {root} failed: {proc.stderr[-800:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default=AGAINST, help="the revision to compare with")
    parser.add_argument("--store", type=Path, help="one store for both code bases (default: each its own model_store)")
    parser.add_argument("--name", default="binarized-mnist", help="the model whose latency is timed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(ROOT)}")
    args = parser.parse_args()
    store = args.store.resolve() if args.store else None
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old), args.against], check=True
        )
        try:
            runs: dict[str, list[dict[str, float]]] = {"this checkout": [], args.against: []}
            for r in range(args.rounds):
                print(f"round {r + 1} of {args.rounds}", file=sys.stderr)
                runs[args.against].append(probe(old, store or old / "model_store", args.name, args.threads, args.calls))
                runs["this checkout"].append(
                    probe(ROOT, store or ROOT / "model_store", args.name, args.threads, args.calls)
                )
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    keys = list(runs["this checkout"][0])
    med = {code: {k: statistics.median(run[k] for run in rs) for k in keys} for code, rs in runs.items()}
    new, base = med["this checkout"], med[args.against]
    load = os.getloadavg()[0]
    lines = [
        f"`bench/memory.py --against {args.against} --rounds {args.rounds} --calls {args.calls} "
        f"--threads {args.threads}`: the models of "
        f"{f'`{store.name}`' if store else 'each code base its own `model_store`'} "
        f"({', '.join(sorted(p.name for p in (store or ROOT / 'model_store').iterdir() if p.is_dir()))}) "
        "loaded as `made serve` loads them, in a fresh process per code base and round; "
        f"medians over {args.rounds} alternating rounds; "
        f"latencies on '{args.name}', one onnxruntime thread; load average {load:.1f} at the end "
        f"({os.cpu_count()} CPUs shared with other work).",
        "",
        f"| reading | {args.against} | this checkout | ratio |",
        "|---|---:|---:|---:|",
    ]
    for k in keys:
        unit = "ms" if k.endswith("(ms)") else "MB"
        label = k if unit == "ms" else f"RSS {k} (MB)"
        lines.append(f"| {label} | {base[k]:.1f} | {new[k]:.1f} | {new[k] / base[k]:.2f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        DOC.write_text(
            "# Memory and single-row latency of the engine\n\nWritten by `bench/memory.py --write` "
            "(its docstring describes what is measured).\n\n" + table
        )
        print(f"wrote {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
