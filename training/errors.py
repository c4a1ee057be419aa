"""Errors raised by ``training/``.

One base class so callers (the CLI, the Prefect flows) can catch everything training raises in one
``except`` and show the message as it is::

    TrainingError
    ├── SpecError     a hyperparameter or option the run cannot take (checked before any work)
    ├── DataError     a data set that is missing, malformed, or too small for the split/window
    ├── DeviceError   the device a run asks for is not there (``--device cuda`` without a GPU)
    └── ExportError   the ONNX export failed or ONNX Runtime disagrees with torch

Every message names the object at fault, what was found, and what is expected, so the user can
fix the call without reading the source.
"""

from __future__ import annotations

__all__ = ["DataError", "DeviceError", "ExportError", "SpecError", "TrainingError"]


class TrainingError(Exception):
    """Base class for every error ``training/`` raises on purpose."""


class SpecError(TrainingError, ValueError):
    """A training spec (kind, hyperparameter, option) that cannot be run."""


class DataError(TrainingError, ValueError):
    """A data set that cannot be loaded or split as asked."""


class DeviceError(TrainingError, RuntimeError):
    """The run asks for a device this machine cannot give it (checked before anything is recorded).

    Not a ``SpecError``: the same spec is valid, and runs, on a machine that has the device.
    """


class ExportError(TrainingError, RuntimeError):
    """ONNX export failed, or the exported graph does not match the torch model."""
