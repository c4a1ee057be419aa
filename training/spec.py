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

__all__ = [
    "ACTIVATIONS",
    "CHOICES",
    "DEVICES",
    "OPTIMIZERS",
    "POOLS",
    "SCHEDULES",
    "SIZES_FIELDS",
    "TrainSpec",
    "parse_sizes",
]

OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd", "rmsprop")
ACTIVATIONS: tuple[str, ...] = ("relu", "leaky_relu", "tanh", "sigmoid")
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "plateau")
POOLS: tuple[str, ...] = ("max", "avg", "none")
#: Where a run trains: ``auto`` is CUDA when torch sees a GPU, else the CPU; ``cuda`` insists.
#: The spec keeps the request, not its outcome, so a spec stays portable between machines; what
#: a run really used is recorded beside it (``training.device.describe``).
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: The input kinds each architecture field shapes; set on any other, it is a mistake, not a no-op.
FIELD_INPUTS: dict[str, tuple[str, ...]] = {
    "hidden": ("table", "series", "text"),
    "conv": ("image",),
    "kernel": ("image",),
    "pool": ("image",),
    "dense": ("image",),
    "batch_norm": ("image",),
    "augment": ("image",),
    "embed": ("text",),
    "tied": ("text",),
    "pointer": ("text",),
}


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
    # Training choices beyond lr; None = the catalog default for the kind and data set.
    weight_decay: float | None = None
    schedule: str | None = None
    # Architecture; None = the family's default (its config dataclass in training/models/).
    hidden: tuple[int, ...] | None = None  # FNN layer widths; RNN hidden size per stacked layer
    dropout: float | None = None
    conv: tuple[int, ...] | None = None  # CNN channels per conv block
    kernel: int | None = None  # CNN kernel size
    pool: str | None = None  # CNN pooling after each block
    dense: tuple[int, ...] | None = None  # CNN dense layer widths before the output
    batch_norm: bool | None = None  # CNN
    augment: bool | None = None  # CNN random affine augmentation
    embed: int | None = None  # text RNN embedding size
    tied: bool | None = None  # text RNN: output layer shares the embedding's weights
    pointer: bool | None = None  # text RNN: a cache that can copy a word from the window
    # Where and how: the device policy (DEVICES) and bf16 autocast on CUDA (training.device).
    device: str = "auto"
    amp: bool = False

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
        for name, choices in CHOICES.items():
            _choice(name, getattr(self, name), choices)
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
        _nonnegative_float("weight_decay", self.weight_decay)
        for name in SIZES_FIELDS:
            _sizes(name, getattr(self, name))
        _positive_int("kernel", self.kernel)
        _positive_int("embed", self.embed)
        if self.dropout is not None:
            _nonnegative_float("dropout", self.dropout)
            if self.dropout >= 1:
                raise SpecError(f"dropout must be in [0, 1), e.g. 0.2; got {self.dropout!r}")
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise SpecError(f"{name} must be true or false; got {value!r}")
        input_kind = input_kind_of(self.data, self.kind)
        for name, kinds in FIELD_INPUTS.items():
            if getattr(self, name) is not None and input_kind not in kinds:
                raise SpecError(
                    f"{name} does not apply to {self.kind} on {input_kind} data; it shapes "
                    f"{' and '.join(kinds)} models only"
                )

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
            weight_decay=(
                float(self.weight_decay)
                if self.weight_decay is not None
                else defaults["weight_decay"]
            ),
            schedule=self.schedule if self.schedule is not None else defaults["schedule"],
            # None comes from compare's ``--vary device=default``: the field's own default.
            device=self.device if self.device is not None else TrainSpec.device,
            amp=self.amp if self.amp is not None else TrainSpec.amp,
        )

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-safe values (str, int, float, bool, None; sizes as lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in fields(self)
        }

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


_INT_FIELDS = {"epochs", "batch_size", "seed", "patience", "window", "limit", "kernel", "embed"}
_FLOAT_FIELDS = {"lr", "weight_decay", "dropout"}
#: Fields holding layer sizes (tuples of ints); the CLI parses their text the same way.
SIZES_FIELDS: tuple[str, ...] = ("hidden", "conv", "dense")
_BOOL_FIELDS = ("batch_norm", "augment", "tied", "pointer", "amp")
#: Fields whose value is one of a fixed tuple; ``validate`` and text coercion both use it.
CHOICES = {
    "optimizer": OPTIMIZERS,
    "activation": ACTIVATIONS,
    "schedule": SCHEDULES,
    "pool": POOLS,
    "device": DEVICES,
}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def parse_sizes(name: str, value: Any) -> tuple[int, ...]:
    """``"32,64"``, ``"32x64"``, ``[32, 64]`` or ``32`` -> ``(32, 64)``; anything else SpecError."""
    if isinstance(value, int) and not isinstance(value, bool):
        items: list[Any] = [value]
    elif isinstance(value, str):
        items = [p for p in value.replace("x", ",").replace(" ", "").split(",") if p]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        items = []
    try:
        sizes = tuple(int(p) for p in items if not isinstance(p, bool) and float(p) == int(p))
    except (TypeError, ValueError):
        sizes = ()
    if not sizes or len(sizes) != len(items):
        raise SpecError(
            f"{name} must be layer sizes separated by commas, e.g. 32,64; got {value!r}"
        )
    return sizes


def _coerce(name: str, value: Any) -> Any:
    """Turn text from a CLI or a metadata store into the field's type; leave the rest as is."""
    if name in SIZES_FIELDS and value is not None and not isinstance(value, tuple):
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
            return None
        return parse_sizes(name, value)
    if value is None or not isinstance(value, str):
        return value
    text = value.strip()
    if text in CHOICES.get(name, ()):  # pool "none" is a choice (no pooling), not the default
        return text
    if text.lower() in ("", "none", "null"):
        return None
    if name in _BOOL_FIELDS:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise SpecError(f"{name} must be true or false; got {value!r}")
    try:
        if name in _INT_FIELDS:
            return int(text)
        if name in _FLOAT_FIELDS:
            return float(text)
    except ValueError:
        kind = "an integer" if name in _INT_FIELDS else "a number"
        raise SpecError(f"{name} must be {kind}; got {value!r}") from None
    return value


def _nonnegative_float(name: str, value: object) -> None:
    """Raise ``SpecError`` unless ``value`` is None or a finite number >= 0."""
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise SpecError(f"{name} must be a number >= 0; got {value!r}")


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise ``SpecError`` unless ``value`` is None or one of ``choices``."""
    if value is not None and value not in choices:
        raise SpecError(f"unknown {name} {value!r}; expected one of: {', '.join(choices)}")


def _sizes(name: str, value: object) -> None:
    """Raise ``SpecError`` unless ``value`` is None or a non-empty tuple of positive ints."""
    if value is None:
        return
    if (
        not isinstance(value, tuple)
        or not value
        or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value)
    ):
        raise SpecError(
            f"{name} must be one or more positive layer sizes, e.g. 32,64; got {value!r}"
        )


def _positive_int(name: str, value: object) -> None:
    """Raise ``SpecError`` unless ``value`` is None or a positive int (bools are not ints here)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpecError(f"{name} must be a positive integer; got {value!r}")
