"""Names of the files in a run directory (no torch here, so `made export` needs none)."""

CONFIG = "config.json"  # model and training configuration, written at the start of a run
CHECKPOINT = "checkpoint.safetensors"  # latest state for resuming: model, optimizer, RNG, progress
BEST = "best.safetensors"  # weights with the best validation NLL, what `made export` ships
METRICS = "metrics.json"  # valid/test NLL of the best weights, written when the run finishes
HISTORY = "log.jsonl"  # one line per epoch
CURVE = "curve.png"  # training curve
DATA = "data.json"  # the sha256 of the data's splits: a resumed run trains on the same rows
