"""Training specs as the pipelines handle them: building one from CLI options, the default
registered-model name, and the JSON round trip that lets a champion be retrained later.

A spec crosses Prefect's API as a plain dict (flow parameters must be JSON), and is stored on
every run and model version as the ``neuroserve.spec`` tag.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import training


def default_model_name(kind: str, data: str) -> str:
    """``<data set>-<kind>`` (e.g. ``mnist-cnn``); for a path, the file's stem."""
    if data in training.BUILTIN_DATASETS:
        stem = data
    else:
        path = Path(data).expanduser()
        stem = path.stem if path.suffix else path.name
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in stem).strip("-.")
    return f"{safe or 'data'}-{kind}"


def build_spec(kind: str, data: str, **options: Any) -> training.TrainSpec:
    """A validated spec from CLI-style options (None means the catalog default).

    Raises training.SpecError before any work starts.
    """
    clean = {k: v for k, v in options.items() if v is not None}
    spec = training.TrainSpec(kind=kind, data=data, **clean)
    spec.validate()
    return spec


def spec_from_dict(data: dict[str, Any]) -> training.TrainSpec:
    """Rebuild (and validate) a spec from its ``to_dict`` form."""
    spec = training.TrainSpec.from_dict(dict(data))
    spec.validate()
    return spec


def spec_from_json(text: str) -> training.TrainSpec:
    """Rebuild a spec stored as the ``neuroserve.spec`` tag."""
    return spec_from_dict(json.loads(text))
