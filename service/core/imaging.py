"""Samples of an image model drawn as one PNG grid (white ink on black, like MNIST)."""

from __future__ import annotations

import io
import math

import numpy as np

PAD = 1  # pixels of grey between cells, before scaling


def sample_grid(samples: np.ndarray, image_shape: list[int]) -> np.ndarray:
    """(n, D) 0/1 -> one (H', W') uint8 image: cells of image_shape on a near-square grid."""
    h, w = (image_shape[0], 1) if len(image_shape) == 1 else (image_shape[0], image_shape[1])
    n = len(samples)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    grid = np.full((rows * (h + PAD) + PAD, cols * (w + PAD) + PAD), 96, dtype=np.uint8)
    cells = samples.reshape(n, h, w).astype(np.uint8) * 255
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = PAD + r * (h + PAD), PAD + c * (w + PAD)
        grid[top : top + h, left : left + w] = cells[i]
    return grid


def samples_png(samples: np.ndarray, image_shape: list[int], scale: int = 1) -> bytes:
    grid = sample_grid(samples, image_shape)
    if scale > 1:
        grid = np.kron(grid, np.ones((scale, scale), dtype=np.uint8))
    buf = io.BytesIO()
    from PIL import Image  # imported on first use: a server without PNG requests never loads it

    Image.fromarray(grid).save(buf, format="PNG")  # uint8 (H, W): greyscale
    return buf.getvalue()
