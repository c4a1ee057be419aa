"""Shared fixtures: tiny but real training runs, one per family, trained once per session.

Each run uses a ``limit`` slice of a real built-in data set and a couple of epochs, so the
folder stays fast on two shared cores while the models, files and metadata are the real thing.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from training import TrainResult, TrainSpec, train

TINY_SPECS: dict[str, TrainSpec] = {
    "fnn": TrainSpec("fnn", "breast-cancer", epochs=3, limit=200),
    "fnn-regression": TrainSpec("fnn", "diabetes", epochs=3, limit=150),
    "cnn": TrainSpec("cnn", "mnist", epochs=1, limit=200, batch_size=32),
    "lstm": TrainSpec("lstm", "sunspots", epochs=2, window=12, limit=120),
    "gru": TrainSpec("gru", "sunspots", epochs=2, window=10, limit=120),
    "lstm-text": TrainSpec("lstm", "pydoc-text", epochs=1, window=8, limit=2500),
}


@pytest.fixture(scope="session")
def trained() -> Callable[[str], TrainResult]:
    """``trained(name)`` -> the TrainResult of ``TINY_SPECS[name]``, computed once."""
    cache: dict[str, TrainResult] = {}

    def get(name: str) -> TrainResult:
        if name not in cache:
            cache[name] = train(TINY_SPECS[name])
        return cache[name]

    return get
