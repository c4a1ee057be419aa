"""Merge several requests' feeds into one batch and split the outputs back (pure numpy).

Kept apart from the batcher's queueing and timing (MLServer's ``batching/requests.py`` split), so
this part can be tested on its own: merging then splitting must hand every request exactly what an
unbatched call would have produced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def merge(feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate each input along axis 0 (a single request is passed through uncopied)."""
    if len(feeds) == 1:
        return dict(feeds[0])
    return {name: np.concatenate([f[name] for f in feeds], axis=0) for name in feeds[0]}


def split(outputs: Mapping[str, np.ndarray], sizes: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Cut every output along axis 0 into consecutive slices of ``sizes``."""
    if len(sizes) == 1:
        return [dict(outputs)]
    total = sum(sizes)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise ValueError(
                f"output '{name}' has leading dimension "
                f"{array.shape[0] if array.ndim else 'none'}, expected the batch size {total}"
            )
    bounds = np.cumsum([0, *sizes])
    return [
        {name: array[bounds[i] : bounds[i + 1]] for name, array in outputs.items()}
        for i in range(len(sizes))
    ]
