"""The curl examples of the API docs, with their real output, and the picture of samples.

    .venv/bin/python scripts/readme_examples.py [--store model_store] [--doc README.md]

Starts `made serve` on a free loopback port, runs each example below with bash and curl (jq
for the shell variables), and writes the commands and their outputs between the markers
`<!-- examples:begin -->` and `<!-- examples:end -->` of --doc (shown with the default
localhost:8000); the table examples between `<!-- records:begin -->` and `<!-- records:end -->`,
the Open Inference Protocol's (curl, and tritonclient run by this interpreter) between
`<!-- oip:begin -->` and `<!-- oip:end -->`. Long arrays in outputs are shortened (`"... N values"`). Also writes
docs/samples.png: 64 samples of the default model, from POST /sample with Accept: image/png,
and docs/denoise.png: test digits corrupted at 10% and denoised by POST /denoise (when the
default model is a 28x28 image model and ../shared/data holds the binarized MNIST test set).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.testing import made_serve

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- examples:begin -->", "<!-- examples:end -->"
SHOWN = "localhost:8000"
JSON = "-H 'Content-Type: application/json'"

# (title, shell commands; the output of the last one is shown)
EXAMPLES: list[tuple[str, str]] = [
    ("Liveness", f"curl -s {SHOWN}/healthz"),
    ("Readiness (503 until the models are loaded)", f"curl -s {SHOWN}/readyz"),
    ("The models", f"curl -s {SHOWN}/models"),
    ("One model's manifest", f"curl -s {SHOWN}/models/$MODEL"),
    ("Samples (the same seed gives the same samples)", f'curl -s {SHOWN}/sample {JSON} -d \'{{"n": 2, "seed": 0}}\''),
    (
        "Samples, bit-packed (base64 of numpy.packbits(samples, axis=1))",
        f'curl -s {SHOWN}/sample {JSON} -d \'{{"n": 2, "seed": 0, "encoding": "packed"}}\'',
    ),
    (
        "Samples as a PNG grid (models with an image_shape)",
        f"curl -s {SHOWN}/sample {JSON} -H 'Accept: image/png' -d '{{\"n\": 64, \"seed\": 0}}' "
        "-o samples.png && file samples.png",
    ),
    (
        "log p(x) of two rows (here: two samples), in nats",
        f'X=$(curl -s {SHOWN}/sample {JSON} -d \'{{"n": 2, "seed": 0}}\' | jq -c .samples)\n'
        f'curl -s {SHOWN}/logprob {JSON} -d "{{\\"x\\": $X}}"',
    ),
    (
        "log p(x_observed) with missing values (null): the second half of a row missing",
        f'X=$(curl -s {SHOWN}/sample {JSON} -d \'{{"n": 1, "seed": 0}}\' | jq -c .samples)\n'
        "HALF=$(echo \"$X\" | jq -c '[.[0] | .[:(length/2)] + [range(length/2) | null]]')\n"
        f'curl -s {SHOWN}/logprob {JSON} -d "{{\\"x\\": $HALF, \\"seed\\": 0}}"',
    ),
    (
        "Conditionals p(x_d = 1 | x_<d) under mask 0",
        f'X=$(curl -s {SHOWN}/sample {JSON} -d \'{{"n": 1, "seed": 0}}\' | jq -c .samples)\n'
        f'curl -s {SHOWN}/conditionals {JSON} -d "{{\\"x\\": $X, \\"mask\\": 0}}"',
    ),
    (
        "Imputation: completions of the missing half, marginals, log p(x_observed)",
        f'X=$(curl -s {SHOWN}/sample {JSON} -d \'{{"n": 1, "seed": 0}}\' | jq -c .samples)\n'
        "HALF=$(echo \"$X\" | jq -c '[.[0] | .[:(length/2)] + [range(length/2) | null]]')\n"
        f'curl -s {SHOWN}/impute {JSON} -d "{{\\"x\\": $HALF, \\"n_samples\\": 2, '
        '\\"seed\\": 0, \\"n_importance\\": 200}"',
    ),
    (
        "Denoising: a row with every tenth value flipped; p(clean = 1 | noisy), the most likely clean "
        "values, log p(noisy)",
        f'X=$(curl -s {SHOWN}/sample {JSON} -d \'{{"n": 1, "seed": 0}}\' | jq -c .samples)\n'
        'NOISY=$(echo "$X" | jq -c \'[.[0] | to_entries | map(if .key % 10 == 0 then 1 - .value '
        "else .value end)]')\n"
        f'curl -s {SHOWN}/denoise {JSON} -d "{{\\"x\\": $NOISY, \\"eps\\": 0.1, \\"n_samples\\": 1, '
        '\\"seed\\": 0}"',
    ),
    (
        "Metrics (Prometheus text; a few lines, counting the requests above)",
        f"curl -s {SHOWN}/metrics | grep -E '^made_requests_total.*sample|^made_batch_requests_sum'",
    ),
    (
        "An invalid value: 422 naming the row, the column and the problem",
        f"curl -s -w '\\nHTTP %{{http_code}}\\n' {SHOWN}/conditionals {JSON} -d '{{\"x\": [[0, 1, 2]]}}'",
    ),
    (
        "An unknown model: 404",
        f'curl -s -w \'\\nHTTP %{{http_code}}\\n\' {SHOWN}/sample {JSON} -d \'{{"n": 1, "model": "nope"}}\'',
    ),
    ("The OpenAPI UI", f"curl -s -o /dev/null -w '%{{http_code}} %{{content_type}}\\n' {SHOWN}/docs"),
]

# Records of a table model (the shipped `diamonds`), for the README's section on tables.
RECORDS_BEGIN, RECORDS_END = "<!-- records:begin -->", "<!-- records:end -->"
DIAMOND = (
    '{"carat": 0.71, "cut": "Ideal", "color": "E", "clarity": "VS2", "depth": 61.9, "table": 56, '
    '"price": 2859, "x": 5.72, "y": 5.76, "z": 3.55}'
)
ODD = DIAMOND.replace('"price": 2859', '"price": 18590')
RECORD_EXAMPLES: list[tuple[str, str]] = [
    (
        "A table model's columns (GET /models/{name} holds the whole schema)",
        f"curl -s {SHOWN}/models/diamonds | jq -c '.columns[] | {{name, kind, levels, transform, decimals}}'",
    ),
    (
        "log p(record) in nats: a real diamond, and the same one at ten times the price",
        f'curl -s {SHOWN}/logprob {JSON} -d \'{{"model": "diamonds", "records": [{DIAMOND}, {ODD}]}}\'',
    ),
    (
        "Which field makes a record unlikely: each column's surprisal (explain)",
        f'curl -s {SHOWN}/logprob {JSON} -d \'{{"model": "diamonds", "explain": true, '
        f"\"records\": [{ODD}]}}' | jq -c '.surprisal[0] | to_entries[] | {{column: .key, "
        "in_order: (.value.in_order * 100 | round / 100), given_others: (.value.given_others // null "
        "| if . then (. * 100 | round / 100) else . end)}'",
    ),
    (
        "Unknown cells (keys left out, or null) are summed out",
        f'curl -s {SHOWN}/logprob {JSON} -d \'{{"model": "diamonds", "seed": 0, '
        '"records": [{"carat": 0.71, "cut": "Ideal", "price": null}]}\'',
    ),
    (
        "Synthetic records that meet a condition",
        f'curl -s {SHOWN}/sample {JSON} -d \'{{"model": "diamonds", "n": 3, "seed": 0, '
        '"given": {"cut": "Ideal", "color": "E"}}\'',
    ),
    (
        "Imputation: the missing price and depth of a record, with their distributions",
        f'curl -s {SHOWN}/impute {JSON} -d \'{{"model": "diamonds", "n_samples": 2, "seed": 0, '
        '"records": [{"carat": 1.01, "cut": "Premium", "color": "F", "clarity": "SI1", '
        '"table": 58, "x": 6.4, "y": 6.35, "z": 3.98}]}\'',
    ),
    (
        "A CSV file scored in one request (empty cells of columns that are never empty are unknown)",
        "printf 'carat,cut,color,clarity,depth,table,price,x,y,z\\n0.71,Ideal,E,VS2,61.9,56,2859,5.72,5.76,3.55\\n"
        "0.71,Ideal,E,VS2,61.9,56,18590,5.72,5.76,3.55\\n0.3,Good,,SI1,,,,,,\\n' > rows.csv\n"
        f"curl -s '{SHOWN}/logprob?model=diamonds&seed=0' -H 'Content-Type: text/csv' -H 'Accept: text/csv' "
        "--data-binary @rows.csv",
    ),
    (
        "A model of bits takes records too (its columns are x0..x{D-1}): a sampled mushroom with "
        "bit x20 (bruises) flipped, and the three bits its other bits make least likely",
        f'R=$(curl -s {SHOWN}/sample {JSON} -d \'{{"model": "mushrooms", "n": 1, "seed": 0, "encoding": "records"}}\' '
        '| jq -c \'.records | .[0].x20 |= (if . == "1" then "0" else "1" end)\')\n'
        f'curl -s {SHOWN}/logprob {JSON} -d "{{\\"model\\": \\"mushrooms\\", \\"explain\\": true, \\"records\\": $R}}" '
        "| jq -c '.surprisal[0] | to_entries | sort_by(-.value.given_others) | .[:3][] | {column: .key, "
        "given_others: (.value.given_others * 100 | round / 100)}'",
    ),
    (
        "Records of bits that meet a condition: the given bits, and how many bits are 1 in each record",
        f'curl -s {SHOWN}/sample {JSON} -d \'{{"model": "mushrooms", "n": 3, "seed": 0, '
        '"given": {"x5": 1, "x20": 1}}\' '
        "| jq -c '{exact, ess, given: [.records[] | {x5, x20}], "
        'ones: [.records[] | [.[] | select(. == "1")] | length]}\'',
    ),
    (
        "A level the model never saw: 422 naming the record, the column and the levels",
        f"curl -s -w '\\nHTTP %{{http_code}}\\n' {SHOWN}/logprob {JSON} "
        '-d \'{"model": "diamonds", "records": [{"cut": "Superb"}]}\'',
    ),
]


# The Open Inference Protocol (the shipped `mushrooms`): curl, then tritonclient in Python.
OIP_BEGIN, OIP_END = "<!-- oip:begin -->", "<!-- oip:end -->"
OIP_EXAMPLES: list[tuple[str, str]] = [
    (
        "log p of two mushrooms, the second with 92 of its 112 bits missing (null), by curl",
        "X=$(python3 -c 'import json; print(json.dumps([[0] * 112, [1] * 20 + [None] * 92]))')\n"
        f'curl -s {SHOWN}/v2/models/mushrooms/infer -d \'{{"inputs": [{{"name": "x", "shape": [2, 112],\n'
        '  "datatype": "FP32", "data": \'"$X"\'}], "parameters": {"seed": 0},\n'
        '  "outputs": [{"name": "logprob"}, {"name": "exact"}]}\'',
    ),
]
OIP_PYTHON = (
    "Samples and their log p by tritonclient",
    """import numpy as np
import tritonclient.http as triton  # pip install 'tritonclient[http]'

client = triton.InferenceServerClient("localhost:8000")  # with MADE_API_KEY: infer(..., headers={...})
drawn = client.infer("mushrooms", [], outputs=[triton.InferRequestedOutput("samples")],
                     parameters={"n": 4, "seed": 0})     # as POST /sample {"n": 4, "seed": 0}
x = drawn.as_numpy("samples").astype(np.float32)         # (4, 112) of 0/1
x[0, 100:] = np.nan                                      # missing values, summed out
inp = triton.InferInput("x", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
print(client.infer("mushrooms", [inp], parameters={"seed": 0}).as_numpy("logprob"))  # nats per row""",
)


@contextmanager
def server(store: Path) -> Iterator[str]:
    env = {"MADE_LOG_LEVEL": "WARNING", "MADE_API_KEY": ""}
    try:
        with made_serve(store, env=env) as proc:
            yield proc.url.removeprefix("http://")
    except RuntimeError as exc:
        sys.exit(str(exc))


def shorten(value: Any, keep: int = 6) -> Any:
    """Lists longer than 2*keep become their first `keep` items and a count."""
    if isinstance(value, dict):
        return {k: shorten(v, keep) for k, v in value.items()}
    if isinstance(value, list):
        items = [shorten(v, keep) for v in value]
        if len(items) > 2 * keep:
            return [*items[:keep], f"... {len(items)} values"]
        return items
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


def render(output: str) -> tuple[str, str]:
    """(language, text): JSON pretty-printed and shortened (a trailing "HTTP nnn" line kept)."""
    body, status = output.rstrip(), ""
    if re.search(r"\nHTTP \d{3}$", body):
        body, status = body.rsplit("\n", 1)
    try:
        data = json.loads(body)
    except ValueError:
        return "text", output.rstrip()
    text = json.dumps(shorten(data), indent=1)
    # one line per innermost list of scalars: easier to read than a column of numbers
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", text)
    return "json", f"{text}\n{status}".rstrip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--doc", type=Path, default=ROOT / "README.md")
    parser.add_argument("--picture", type=Path, default=ROOT / "docs" / "samples.png")
    parser.add_argument("--table-picture", type=Path, default=ROOT / "docs" / "tables.png")
    parser.add_argument("--denoise-picture", type=Path, default=ROOT / "docs" / "denoise.png")
    args = parser.parse_args()
    if not args.store.is_dir():
        sys.exit(f"model store {args.store} does not exist (run `make models`, or pass --store)")
    with server(args.store) as base, tempfile.TemporaryDirectory() as work:
        listing = httpx.get(f"http://{base}/models").json()
        model = listing["default"]
        is_image = any(m["name"] == model and m["image_shape"] for m in listing["models"])
        blocks = [
            f"Generated by `scripts/readme_examples.py` against the store "
            f"`{args.store.name}` (default model `{model}`); long arrays are shortened.\n"
        ]
        for title, commands in EXAMPLES:
            if "image/png" in commands and not is_image:
                continue  # the default model has no image_shape
            blocks.append(run_example(title, commands.replace("$MODEL", model), base, work))
        names = {m["name"] for m in listing["models"]}
        records = [f"Generated by `scripts/readme_examples.py` against the store `{args.store.name}`.\n"]
        if "diamonds" in names:
            records += [run_example(title, commands, base, work) for title, commands in RECORD_EXAMPLES]
            table_picture(base, args.table_picture)
        oip = [f"Generated by `scripts/readme_examples.py` against the store `{args.store.name}`.\n"]
        if "mushrooms" in names:
            oip += [run_example(title, commands, base, work) for title, commands in OIP_EXAMPLES]
            oip.append(run_python_example(*OIP_PYTHON, base, work))
        png = httpx.post(
            f"http://{base}/sample?scale=3", json={"n": 64, "seed": 0}, headers={"Accept": "image/png"}, timeout=120
        )
        if png.status_code == 200:
            args.picture.write_bytes(png.content)
            print(f"wrote {args.picture}", file=sys.stderr)
        else:
            print(f"no picture: {png.json()['detail']}", file=sys.stderr)
        shape = next((m["image_shape"] for m in listing["models"] if m["name"] == model), None)
        if shape == [28, 28]:
            denoise_picture(base, args.denoise_picture)
    doc = args.doc.read_text() if args.doc.exists() else f"{BEGIN}\n{END}\n"
    doc = replace_between(doc, BEGIN, END, "\n".join(blocks), args.doc)
    if len(records) > 1 and RECORDS_BEGIN in doc:
        doc = replace_between(doc, RECORDS_BEGIN, RECORDS_END, "\n".join(records), args.doc)
    if len(oip) > 1 and OIP_BEGIN in doc:
        doc = replace_between(doc, OIP_BEGIN, OIP_END, "\n".join(oip), args.doc)
    args.doc.write_text(doc)
    print(f"wrote the examples into {args.doc}", file=sys.stderr)
    return 0


def run_example(title: str, commands: str, base: str, work: str) -> str:
    script = "set -eo pipefail\n" + commands.replace(SHOWN, base)
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=work, timeout=300)
    if run.returncode != 0:
        sys.exit(f"example failed ({title}): {run.stderr or run.stdout}")
    lang, shown = render(run.stdout)
    return f"**{title}**\n\n```bash\n{commands}\n```\n```{lang}\n{shown}\n```\n"


def run_python_example(title: str, code: str, base: str, work: str) -> str:
    """A Python snippet run by this interpreter (tritonclient is a dev dependency), its print shown."""
    run = subprocess.run(
        [sys.executable, "-c", code.replace(SHOWN, base)], capture_output=True, text=True, cwd=work, timeout=300
    )
    if run.returncode != 0:
        sys.exit(f"example failed ({title}): {run.stderr or run.stdout}")
    return f"**{title}**\n\n```python\n{code}\n```\n```text\n{run.stdout.rstrip()}\n```\n"


def replace_between(doc: str, begin: str, end: str, generated: str, path: Path) -> str:
    if begin not in doc or end not in doc:
        sys.exit(f"{path} lacks the markers {begin} and {end}")
    head, rest = doc.split(begin, 1)
    tail = rest.split(end, 1)[1]
    return f"{head}{begin}\n{generated}\n{end}{tail}"


def table_picture(base: str, path: Path) -> None:
    """Carat against price: 2,000 test rows of diamonds beside 2,000 records sampled from the model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from made.io.tables import read_table

    data = ROOT.parent / "shared" / "data" / "tables" / "diamonds_test.csv"
    if not data.exists():
        print(f"no table picture: {data} is absent", file=sys.stderr)
        return
    header, rows, _ = read_table(data)
    chosen = np.random.default_rng(0).choice(len(rows), size=2000, replace=False)  # the file is in price order
    test = [(float(rows[i][header.index("carat")]), float(rows[i][header.index("price")])) for i in chosen]
    sampled = httpx.post(f"http://{base}/sample", json={"model": "diamonds", "n": 2000, "seed": 0}, timeout=300)
    samples = [(r["carat"], r["price"]) for r in sampled.json()["records"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True, sharey=True)
    for ax, points, title in ((axes[0], test, "test rows"), (axes[1], samples, "samples from the model")):
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=3, alpha=0.35)
        ax.set_yscale("log")
        ax.set_title(f"diamonds: {title} (2,000)")
        ax.set_xlabel("carat")
    axes[0].set_ylabel("price (USD, log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)


def denoise_picture(base: str, path: Path, eps: float = 0.1, n: int = 8) -> None:
    """The first n binarized-MNIST test digits; each bit flipped with probability eps (seed 0);
    POST /denoise's p(clean = 1 | noisy) and most likely values; a 3x3 median filter beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.ndimage import median_filter

    data = ROOT.parent / "shared" / "data" / "binarized_mnist.npz"
    if not data.exists():
        print(f"no denoising picture: {data} is absent", file=sys.stderr)
        return
    clean = np.load(data)["test"][:n].astype(np.uint8)
    noisy = np.where(np.random.default_rng(0).random(clean.shape) < eps, 1 - clean, clean)
    r = httpx.post(
        f"http://{base}/denoise",
        json={"x": noisy.tolist(), "eps": eps, "n_samples": 1, "seed": 0},
        timeout=600,
    )
    if r.status_code != 200:
        print(f"no denoising picture: {r.json()['detail']}", file=sys.stderr)
        return
    answer = r.json()
    marginals, likely = np.array(answer["marginals"]), np.array(answer["most_likely"])
    median = np.stack([median_filter(x.reshape(28, 28), size=3).ravel() for x in noisy])
    panels = [
        ("clean test digits", clean),
        (f"each bit flipped with probability {eps:g}", noisy),
        ("POST /denoise: p(clean = 1 | noisy)", marginals),
        ("POST /denoise: most likely value", likely),
        ("3x3 median filter", median),
    ]
    fig, axes = plt.subplots(len(panels), n, figsize=(n * 1.1, len(panels) * 1.25))
    for row, (title, images) in enumerate(panels):
        errors = "" if row in (0, 2) else f" ({100 * np.mean(images != clean):.1f}% of bits wrong)"
        axes[row, 0].set_title(title + errors, loc="left", fontsize=9)
        for j in range(n):
            axes[row, j].imshow(images[j].reshape(28, 28), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axes[row, j].axis("off")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.95, bottom=0.01, hspace=0.3, wspace=0.06)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
