"""Linear autoregression on a look-back window, in numpy.

The series baseline fits it as a classical candidate and the series network starts from it, so
both fit one and the same model here: least squares with an intercept on the last ``order`` lags
of each window, on levels or on first differences (the next change, added to the last value),
on the raw scale or on a square-root working scale for counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Autoregression", "from_work", "least_squares", "to_work"]


def to_work(values: np.ndarray, transform: str) -> np.ndarray:
    """Raw values -> the working scale (the graph's ``SeriesRNN`` does the same in torch)."""
    return np.sqrt(np.clip(values, 0.0, None)) if transform == "sqrt" else values


def from_work(values: np.ndarray, transform: str) -> np.ndarray:
    """The working scale -> raw values."""
    return np.square(np.clip(values, 0.0, None)) if transform == "sqrt" else values


def least_squares(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[intercept, coefficients...]`` of ``b ~ a`` by least squares (minimum norm if rank
    deficient, e.g. a constant stretch)."""
    design = np.column_stack([np.ones(len(a)), a])
    coef, *_ = np.linalg.lstsq(design, b, rcond=None)
    return np.asarray(coef, dtype=np.float64)


def _lags(x: np.ndarray, path: str, transform: str) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``[n, window, 1]`` -> (lag columns, last value), both on the working scale."""
    v = to_work(x[:, :, 0].astype(np.float64), transform)
    return (np.diff(v, axis=1) if path == "differences" else v), v[:, -1]


@dataclass(frozen=True)
class Autoregression:
    """A fitted AR(``order``) on ``path`` ("levels" or "differences") and ``transform``.

    ``order`` 0 on differences is a random walk with drift.
    """

    path: str
    transform: str
    order: int
    coef: np.ndarray

    @classmethod
    def fit(
        cls, x: np.ndarray, y: np.ndarray, path: str, order: int, transform: str = "none"
    ) -> Autoregression:
        """Least squares on training windows ``x`` and their next values ``y``."""
        a, last = _lags(x, path, transform)
        target = to_work(y.astype(np.float64), transform)
        if path == "differences":
            target = target - last
        return cls(path, transform, order, least_squares(a[:, a.shape[1] - order :], target))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Next value of each window ``[n, window, 1]``, 1-D, in the series' own units."""
        a, last = _lags(x, self.path, self.transform)
        out = self.coef[0] + a[:, a.shape[1] - self.order :] @ self.coef[1:]
        if self.path == "differences":
            out = out + last
        return from_work(out, self.transform)
