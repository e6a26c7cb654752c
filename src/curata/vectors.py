"""Small vector helpers shared by features, tasks, clustering, describe and quality."""

from __future__ import annotations

import numpy as np


def l2_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (a new array; all-zero rows stay zero). Keeps a float dtype,
    casts anything else to float32."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1, norms).astype(x.dtype)
