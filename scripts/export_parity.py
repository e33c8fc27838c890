"""ONNX-vs-PyTorch parity of an exported model on real data, for every mask.

    .venv/bin/python scripts/export_parity.py RUN_DIR --store model_store --name binarized-mnist \
        --dataset ../shared/data/binarized_mnist.npz [--rows 2000]

Compares log p(x) per row from onnxruntime (the stored graph, --providers, every mask through
`mask_index`) with PyTorch on the run's best weights as they were stored: rounded to float16
when the export used `--weights float16`. Also prints the mixture NLL of both and of the
unrounded float32 PyTorch model, i.e. what float16 storage costs. One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from made.io.data import load_dataset  # noqa: E402
from made.store.versions import open_model  # noqa: E402
from service.engine.runtime import provider_options  # noqa: E402
from training.checkpoint import BEST, load_tensors  # noqa: E402
from training.model import MADE  # noqa: E402
from training.train import CONFIG, TrainConfig  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--store", default="model_store")
    parser.add_argument("--name", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--rows", type=int, default=0, help="first N rows only (0: all)")
    parser.add_argument(
        "--providers",
        default="CPUExecutionProvider",
        help="comma-separated onnxruntime providers, e.g. CUDAExecutionProvider,CPUExecutionProvider",
    )
    args = parser.parse_args()

    run_dir = Path(args.run_dir)
    stored = open_model(Path(args.store), args.name)
    dtype = stored.manifest.weight_dtype or "float32"
    cfg = TrainConfig.from_dict(json.loads((run_dir / CONFIG).read_text()))
    state = load_tensors(run_dir / BEST)[0]
    fp32 = MADE(cfg.model)
    fp32.load_state_dict(state)
    served = MADE(cfg.model)
    served.load_state_dict(
        {k: v.half().float() if dtype == "float16" and k.endswith("weight") else v for k, v in state.items()}
    )
    x = load_dataset(args.dataset, splits=(args.split,)).split(args.split)
    if args.rows:
        x = x[: args.rows]
    xt = torch.from_numpy(x).float()
    providers = args.providers.split(",")
    try:
        # the stored graph of one mask; onnxruntime reads its weights from weights.safetensors beside it
        session = ort.InferenceSession(str(stored.onnx_path), providers=provider_options(providers))
    except Exception as exc:  # e.g. a provider this onnxruntime build lacks
        print(f"export_parity: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    if session.get_providers()[0] != providers[0]:  # onnxruntime-gpu falls back to the CPU silently
        print(f"export_parity: asked for {providers[0]}, the session runs {session.get_providers()}", file=sys.stderr)
        return 2

    worst, per_mask_ort, per_mask_torch, per_mask_fp32 = [], [], [], []
    with torch.no_grad():
        for k in range(served.n_masks):
            logits = session.run(["logits"], {"x": x.astype(np.float32), "mask_index": np.array(k, np.int64)})[0]
            signed = np.where(x == 1, logits, -logits).astype(np.float64)
            lp_ort = -np.logaddexp(0.0, -signed).sum(axis=1)
            lp_torch = served.log_prob(xt, k).double().numpy()
            per_mask_ort.append(lp_ort)
            per_mask_torch.append(lp_torch)
            per_mask_fp32.append(fp32.log_prob(xt, k).double().numpy())
            worst.append(float(np.abs(lp_ort - lp_torch).max()))

    def mixture_nll(per_mask: list[np.ndarray]) -> float:
        a = np.stack(per_mask)
        top = a.max(axis=0)
        return float(-(top + np.log(np.exp(a - top).mean(axis=0))).mean())

    print(
        json.dumps(
            {
                "model": f"{args.name}/{stored.version}",
                "weight_dtype": dtype,
                "rows": len(x),
                "split": args.split,
                "max_abs_diff_logp_per_mask": worst,
                "max_abs_diff_logp": max(worst),
                "mixture_nll_onnxruntime": mixture_nll(per_mask_ort),
                "mixture_nll_torch_stored_weights": mixture_nll(per_mask_torch),
                "mixture_nll_torch_float32": mixture_nll(per_mask_fp32),
                "providers": session.get_providers(),
                "threads": torch.get_num_threads(),
                "ok": max(worst) <= 1e-4 and not math.isnan(max(worst)),
            },
            indent=1,
        )
    )
    return 0 if max(worst) <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
