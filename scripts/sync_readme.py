"""Copy the generated tables of docs/*.md into README.md between their markers.

    .venv/bin/python scripts/sync_readme.py

Each README section `<!-- include:docs/NAME.md -->` ... `<!-- /include -->` is replaced by the
tables (lines starting with '|') and the lines right above them of that generated file, so every
number in the README comes from the script that wrote the file (named in the file itself);
`<!-- include:docs/NAME.md#N -->` takes its first N tables only.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATTERN = re.compile(r"(<!-- include:(?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- /include -->)", re.S)


def extract(text: str, first: int | None = None) -> str:
    """The tables of a generated doc (the first `first` of them, or all), each with the paragraph
    just above it."""
    blocks = text.strip().split("\n\n")
    keep = [b for b in blocks if any(line.startswith("|") for line in b.splitlines())]
    return "\n\n".join(keep[:first])


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()

    def replace(match: re.Match[str]) -> str:
        path, _, first = match.group("path").partition("#")
        source = ROOT / path
        if not source.exists():
            print(f"sync_readme: {source} not found; section left as it was", file=sys.stderr)
            return match.group(0)
        return f"{match.group(1)}{extract(source.read_text(), int(first) if first else None)}\n{match.group(4)}"

    readme.write_text(PATTERN.sub(replace, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
