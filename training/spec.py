"""The training spec: every choice a run makes, in one frozen, JSON-safe dataclass.

The spec is what pipelines/ records as MLflow params and what the ONNX ``config`` metadata holds,
so a model file can explain how it was made and ``TrainSpec.from_dict`` can re-run it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from training.catalog import BUILTIN_DATASETS, KIND_INPUTS, KINDS, defaults_for, input_kind_of
from training.errors import SpecError

__all__ = ["ACTIVATIONS", "OPTIMIZERS", "TrainSpec"]

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd", "rmsprop")
ACTIVATIONS: tuple[str, ...] = ("relu", "leaky_relu", "tanh", "sigmoid")


@dataclass(frozen=True)
class TrainSpec:
    """One training run: model kind, data, hyperparameters and seed.

    ``None`` fields mean "the default for this kind and data set"; ``resolved()`` fills them in so
    the recorded spec always says what actually ran.
    """

    kind: str
    data: str
    target: str | None = None
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    optimizer: str = "adam"
    activation: str = "relu"
    seed: int = 42
    patience: int = 5
    window: int | None = None
    limit: int | None = None

    def validate(self) -> None:
        """Raise ``SpecError`` naming the first field that cannot work and what it accepts.

        Called before any data is read so a typo never costs a data load or a half-done run.
        """
        if self.kind not in KINDS:
            raise SpecError(
                f"unknown model kind {self.kind!r}; expected one of: {', '.join(KINDS)}"
            )
        if not isinstance(self.data, str) or not self.data.strip():
            raise SpecError(
                "data is empty; expected a built-in data set "
                f"({', '.join(BUILTIN_DATASETS)}) or a path to a file or folder"
            )
        if self.data in BUILTIN_DATASETS:
            input_kind = BUILTIN_DATASETS[self.data].input_kind
            if input_kind not in KIND_INPUTS[self.kind]:
                fitting = [k for k, ins in KIND_INPUTS.items() if input_kind in ins]
                raise SpecError(
                    f"kind {self.kind!r} cannot train on {self.data!r} ({input_kind} data); "
                    f"use {' or '.join(fitting)}"
                )
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _positive_int("patience", self.patience)
        _positive_int("limit", self.limit)
        if self.lr is not None and (
            isinstance(self.lr, bool)
            or not isinstance(self.lr, int | float)
            or not math.isfinite(self.lr)
            or self.lr <= 0
        ):
            raise SpecError(f"lr must be a positive number, e.g. 0.001; got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise SpecError(
                f"unknown optimizer {self.optimizer!r}; expected one of: {', '.join(OPTIMIZERS)}"
            )
        if self.activation not in ACTIVATIONS:
            raise SpecError(
                f"unknown activation {self.activation!r}; expected one of: {', '.join(ACTIVATIONS)}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise SpecError(f"seed must be a non-negative integer; got {self.seed!r}")
        _positive_int("window", self.window)
        if self.window is not None and self.window < 2:
            raise SpecError(f"window must be at least 2 steps; got {self.window}")
        if self.limit is not None and self.limit < 20:
            raise SpecError(
                f"limit must be at least 20 samples to leave a train, validation and test "
                f"split; got {self.limit}"
            )
        if self.target is not None and (not isinstance(self.target, str) or not self.target):
            raise SpecError(f"target must be a column name; got {self.target!r}")

    def resolved(self) -> TrainSpec:
        """A copy with ``epochs``, ``lr``, ``batch_size`` and ``window`` set to their defaults.

        ``window`` stays ``None`` for tables and images, which have no look-back.
        """
        self.validate()
        input_kind = input_kind_of(self.data, self.kind)
        defaults = defaults_for(self.kind, self.data, input_kind)
        window = self.window
        if input_kind in ("series", "text"):
            window = window if window is not None else defaults["window"]
        else:
            window = None
        return dataclasses.replace(
            self,
            epochs=self.epochs if self.epochs is not None else defaults["epochs"],
            lr=float(self.lr) if self.lr is not None else defaults["lr"],
            batch_size=self.batch_size if self.batch_size is not None else defaults["batch_size"],
            window=window,
        )

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-safe values (str, int, float, None)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainSpec:
        """Build a spec from a mapping, e.g. JSON metadata or CLI ``--vary`` values.

        Numeric strings are converted (``"0.01"`` -> 0.01) because CLI and MLflow hand values
        over as text; unknown keys raise ``SpecError`` listing the known ones.
        """
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise SpecError(
                f"unknown spec field(s): {', '.join(unknown)}; known fields are: {', '.join(known)}"
            )
        for required in ("kind", "data"):
            if required not in d:
                raise SpecError(f"spec is missing {required!r}; it needs at least kind and data")
        kwargs: dict[str, Any] = {}
        for name, value in d.items():
            kwargs[name] = _coerce(name, value)
        spec = cls(**kwargs)
        spec.validate()
        return spec


_INT_FIELDS = {"epochs", "batch_size", "seed", "patience", "window", "limit"}
_FLOAT_FIELDS = {"lr"}


def _coerce(name: str, value: Any) -> Any:
    """Turn text from a CLI or a metadata store into the field's type; leave the rest as is."""
    if value is None or not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() in ("", "none", "null"):
        return None
    try:
        if name in _INT_FIELDS:
            return int(text)
        if name in _FLOAT_FIELDS:
            return float(text)
    except ValueError:
        kind = "an integer" if name in _INT_FIELDS else "a number"
        raise SpecError(f"{name} must be {kind}; got {value!r}") from None
    return value


def _positive_int(name: str, value: object) -> None:
    """Raise ``SpecError`` unless ``value`` is None or a positive int (bools are not ints here)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpecError(f"{name} must be a positive integer; got {value!r}")
