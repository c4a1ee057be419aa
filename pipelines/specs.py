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
import training.spec


def default_model_name(kind: str, data: str) -> str:
    """``<data set>-<kind>`` (e.g. ``mnist-cnn``); for a path, the file's stem."""
    if data in training.BUILTIN_DATASETS:
        stem = data
    else:
        path = Path(data).expanduser()
        stem = path.stem if path.suffix else path.name
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in stem).strip("-.")
    return f"{safe or 'data'}-{kind}"


def flag(field: str) -> str:
    """The command-line flag of a spec field (``batch_size`` -> ``--batch-size``).

    The one place that maps one to the other: typer derives the same names from the commands'
    parameter names, and error messages use this to name the flag the user typed.
    """
    return "--" + field.replace("_", "-")


def build_spec(kind: str, data: str, **options: Any) -> training.TrainSpec:
    """A validated spec from CLI-style options (None means the default).

    Layer sizes may be given as text (``"32,64"`` or ``"32x64"``). Raises training.SpecError
    before any work starts, its one line naming the flag at fault (``--conv``, not ``conv``).
    """
    typed = {k: v for k, v in options.items() if v is not None}
    clean = dict(typed)
    for name in training.spec.SIZES_FIELDS:
        if name in clean and not isinstance(clean[name], tuple):
            clean[name] = training.spec.parse_sizes(flag(name), clean[name])
    base = training.TrainSpec(kind=kind, data=data)
    try:
        base.validate()
    except training.SpecError as exc:
        raise training.SpecError(_name_flag(str(exc), "data")) from None
    # Each option on its own, in the order given, so the first bad one is named.
    for name, value in clean.items():
        try:
            training.TrainSpec(kind=kind, data=data, **{name: value}).validate()
        except training.SpecError as exc:
            # Quote the value as typed ('0,64'), not as parsed ((0, 64)).
            text = str(exc).replace(f"got {value!r}", f"got {typed[name]!r}")
            raise training.SpecError(_name_flag(text, name, prefix=True)) from None
    spec = training.TrainSpec(kind=kind, data=data, **clean)
    spec.validate()
    return spec


def _name_flag(message: str, field: str, *, prefix: bool = False) -> str:
    """``message`` with the field's name, where it leads the message, replaced by its flag.

    Spec messages start with the field (``conv must be ...``) or with ``unknown <field> ...``;
    any other message gets the flag in front when ``prefix`` is set.
    """
    for lead in (f"{field} ", f"unknown {field} "):
        if message.startswith(lead):
            return lead.replace(field, flag(field), 1) + message[len(lead) :]
    return f"{flag(field)}: {message}" if prefix else message


def spec_from_dict(data: dict[str, Any]) -> training.TrainSpec:
    """Rebuild (and validate) a spec from its ``to_dict`` form."""
    spec = training.TrainSpec.from_dict(dict(data))
    spec.validate()
    return spec


def spec_from_json(text: str) -> training.TrainSpec:
    """Rebuild a spec stored as the ``neuroserve.spec`` tag."""
    return spec_from_dict(json.loads(text))
