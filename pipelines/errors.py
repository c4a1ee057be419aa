"""Errors the pipelines raise, and the one place that knows which of them are the user's doing.

Hierarchy::

    PipelineError                 base: a message a user can act on
    ├── TrackingUnavailableError  MLflow tracking URI unreachable (after retries)
    ├── PrefectUnavailableError   no Prefect API server where one is required (schedules)
    ├── ModelNotFoundError        unknown registered model, alias or version
    ├── VaryError                 `compare --vary` names an unknown parameter or value
    ├── ScoringInputError         a scoring file does not fit the model (columns, shapes, bad rows)
    └── GateError                 the quality gate could not be evaluated

The CLI turns every ``PipelineError`` (and ``training.TrainingError``) into one red line and exit
code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: the message names the problem and what was expected."""


class TrackingUnavailableError(PipelineError):
    """The MLflow tracking store could not be reached after the configured retries."""

    def __init__(self, uri: str, attempts: int, cause: str) -> None:
        super().__init__(
            f"MLflow tracking URI {uri!r} is unreachable after {attempts} attempt(s): {cause}. "
            "Start the tracking server or set MLFLOW_TRACKING_URI to a reachable store "
            "(unset it to use the local SQLite store under NEUROSERVE_HOME)."
        )
        self.uri = uri


class PrefectUnavailableError(PipelineError):
    """A Prefect API server is required (schedules) but none answered."""


class ModelNotFoundError(PipelineError):
    """The model reference names no registered model, alias, version or file."""


class VaryError(PipelineError):
    """`--vary` asks for a parameter or a value the training spec cannot take."""


class ScoringInputError(PipelineError):
    """The input file does not match the model's inputs; nothing has been scored."""


class GateError(PipelineError):
    """The quality gate could not be evaluated."""
