"""`make bench`: run every benchmark script in bench/ and print their tables.

    .venv/bin/python bench/run_all.py [--write] [--only NAME,NAME]

A script in bench/ joins automatically; the ones below are left out because they are not
quick benchmarks (bench/results.py trains every model for hours; bench/gpu_check.py needs a
GPU). --write is passed on to the scripts that take it (they write their tables to docs/).
Exit status 1 if any script failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
NOT_FOR_MAKE_BENCH = {"run_all.py", "results.py", "gpu_check.py"}


def scripts() -> list[Path]:
    return sorted(p for p in BENCH.glob("*.py") if p.name not in NOT_FOR_MAKE_BENCH and not p.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated names, e.g. engine_bench")
    parser.add_argument("--write", action="store_true", help="scripts that can, write docs/")
    args = parser.parse_args(argv)
    only = {name.removesuffix(".py") for name in args.only.split(",") if name}
    chosen = [p for p in scripts() if not only or p.stem in only]
    if not chosen:
        print(f"no benchmark scripts to run in {BENCH}", file=sys.stderr)
        return 1
    failed = []
    for script in chosen:
        print(f"## {script.name}\n", flush=True)
        start = time.perf_counter()
        # stdout (the table) goes straight through; progress notes go to stderr
        extra = ["--write"] if args.write and '"--write"' in script.read_text() else []
        code = subprocess.call([sys.executable, str(script), *extra], cwd=BENCH.parent)
        print(f"\n({script.name}: exit {code}, {time.perf_counter() - start:.0f} s)\n", flush=True)
        if code != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
