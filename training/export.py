"""ONNX export to docs/contracts.md, with a parity check that fails loudly.

The file is written only when it is right: exported to a temporary file beside the target,
checked (dynamic axes really dynamic, metadata set, ONNX checker), run in ONNX Runtime on the
CPU provider against torch on held-out data at several batch sizes (and two sequence lengths
for recurrent models), and only then moved into place. A failed export leaves nothing behind.

The model is exported from the CPU (the loop hands it back there after training on a GPU), and
the CPU provider's parity is the check that passes or fails. Where ONNX Runtime's CUDA provider
really loads, the same batches run through it too and its difference from torch is recorded
beside the CPU's (``ExportReport.provider_diffs``), with TF32 off so the GPU computes in float32
as the CPU does; where it does not load, ``provider_notes`` says why.

The TorchScript exporter (``dynamo=False``) is used: it maps ``nn.LSTM``/``nn.GRU`` to the ONNX
recurrent ops and honours ``dynamic_axes`` exactly, which is what the parity check verifies.
"""

from __future__ import annotations

import ctypes
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from training.errors import ExportError

if TYPE_CHECKING:
    from training.run import TrainResult

__all__ = [
    "CPU_PROVIDER",
    "CUDA_PROVIDER",
    "OPSET",
    "PARITY_BATCH_SIZES",
    "PARITY_TOLERANCE",
    "ExportReport",
    "export_onnx",
]

OPSET = 17
#: Parity bound on ``|onnx - torch| / max(1, |torch|)``: absolute for outputs within ±1
#: (probabilities), relative beyond, where float32 itself cannot promise 1e-4 (a sunspot count of
#: 150 is only resolved to ~1e-5, and a chain of ops compounds it).
PARITY_TOLERANCE = 1e-4
PARITY_BATCH_SIZES: tuple[int, ...] = (1, 2, 7, 64)
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
CONTRACT_KEYS = (
    "task",
    "input_kind",
    "labels",
    "feature_names",
    "vocabulary",
    "tokenizer_pattern",
    "unk_token",
    "window",
    "config",
    "data_sha256",
)


@dataclass
class ExportReport:
    """Where the file went and how closely ONNX Runtime reproduces torch."""

    path: Path
    #: Largest ``|onnx - torch| / max(1, |torch|)`` over the parity batches (see PARITY_TOLERANCE).
    max_diff: float
    per_batch: dict[str, float]
    opset: int
    size_bytes: int
    metadata: dict[str, str] = field(default_factory=dict)
    providers: list[str] = field(default_factory=list)
    #: Max difference per provider measured (the CPU's is ``max_diff``, the one that gates).
    provider_diffs: dict[str, float] = field(default_factory=dict)
    #: Why a provider was not measured, e.g. the CUDA provider on a machine without CUDA.
    provider_notes: dict[str, str] = field(default_factory=dict)


def export_onnx(
    result: TrainResult, path: Path, extra_metadata: Mapping[str, str] | None = None
) -> ExportReport:
    """Export ``result.model`` to ``path`` as one self-contained ONNX file and check parity.

    ``extra_metadata`` adds keys such as ``mlflow_run_id`` and ``model_name``; it may not
    overwrite the contract's keys. Raises ``ExportError`` (and writes nothing) when the export,
    the graph check or the parity check fails; the message names the batch size and the
    difference.
    """
    path = Path(path)
    data = result.data
    metadata = build_metadata(result)
    for key, value in (extra_metadata or {}).items():
        if key in metadata:
            raise ExportError(
                f"extra metadata key {key!r} would overwrite the contract's own value; "
                f"use another key (reserved: {', '.join(CONTRACT_KEYS)})"
            )
        metadata[str(key)] = str(value)
    sequence = data.input_kind in ("series", "text")
    held_out = data.x_test if len(data.x_test) else data.x_val
    if len(held_out) == 0:
        raise ExportError("no held-out samples to check parity on; the test split is empty")
    model = result.model.eval()
    example = torch.from_numpy(_rows(held_out, 3))  # not 1: a batch of 1 invites a fixed axis
    dynamic_axes = {"input": {0: "batch"}, "output": {0: "batch"}}
    if sequence:
        dynamic_axes["input"][1] = "time"

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _torch_export(model, example, tmp, dynamic_axes)
        _finish_graph(tmp, metadata, sequence)
        per_batch, providers = _parity(model, tmp, held_out, sequence)
        diffs = {CPU_PROVIDER: max(per_batch.values())}
        notes: dict[str, str] = {}
        cuda, why = _cuda_session(tmp)
        if cuda is None:
            notes[CUDA_PROVIDER] = why
        else:
            diffs[CUDA_PROVIDER] = max(_differences(model, cuda, held_out, sequence).values())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportReport(
        path=path,
        max_diff=diffs[CPU_PROVIDER],
        per_batch=per_batch,
        opset=OPSET,
        size_bytes=path.stat().st_size,
        metadata=metadata,
        providers=providers,
        provider_diffs=diffs,
        provider_notes=notes,
    )


def build_metadata(result: TrainResult) -> dict[str, str]:
    """The contract's ``metadata_props``: every key present, JSON where structured.

    Keys that do not apply to this task hold an empty JSON list or an empty string, so readers
    never need to guess whether a key is missing on purpose.
    """
    data = result.data
    return {
        "task": data.task,
        "input_kind": data.input_kind,
        "labels": json.dumps(list(data.labels)),
        "feature_names": json.dumps(list(data.feature_names) if data.input_kind == "table" else []),
        "vocabulary": json.dumps(list(data.vocabulary)),
        "tokenizer_pattern": data.tokenizer_pattern,
        "unk_token": data.unk_token,
        "window": str(data.window) if data.window is not None else "",
        "config": json.dumps(result.spec.to_dict(), sort_keys=True),
        "data_sha256": data.sha256,
        "architecture": json.dumps(result.architecture, sort_keys=True, default=str),
        "data_name": data.name,
        "primary_metric": result.primary_metric,
        "test_metrics": json.dumps(result.test_metrics, sort_keys=True),
        **({"pixel_max": f"{data.pixel_max:g}"} if data.pixel_max is not None else {}),
    }


def _rows(x: np.ndarray, n: int) -> np.ndarray:
    """``n`` rows of real held-out data, cycling when there are fewer."""
    idx = np.arange(n) % len(x)
    return np.ascontiguousarray(x[idx])


def _torch_export(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    """Run the TorchScript exporter; its deprecation chatter is expected and silenced."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                do_constant_folding=True,
            )
    except Exception as exc:
        raise ExportError(f"torch could not export {type(model).__name__} to ONNX: {exc}") from exc


def _finish_graph(path: Path, metadata: Mapping[str, str], sequence: bool) -> None:
    """Check the axes are dynamic, attach metadata, validate, and save as one file."""
    import onnx

    proto = onnx.load(str(path))
    graph = proto.graph
    names = ([i.name for i in graph.input], [o.name for o in graph.output])
    if names != (["input"], ["output"]):
        raise ExportError(
            f"exported graph has inputs/outputs {names}; expected ['input'], ['output']"
        )
    expected_dynamic = {"input": [0, 1] if sequence else [0], "output": [0]}
    for value in (*graph.input, *graph.output):
        dims = value.type.tensor_type.shape.dim
        for axis in expected_dynamic[value.name]:
            if not dims[axis].dim_param:
                raise ExportError(
                    f"axis {axis} of {value.name!r} was exported as fixed size "
                    f"{dims[axis].dim_value}; it must be dynamic"
                )
    del proto.metadata_props[:]
    for key, text in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, text
    proto.producer_name = "neuroserve.training"
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported graph is not valid ONNX: {exc}") from exc
    onnx.save_model(proto, str(path), save_as_external_data=False)


def _parity(
    model: torch.nn.Module, path: Path, held_out: np.ndarray, sequence: bool
) -> tuple[dict[str, float], list[str]]:
    """Max |ORT - torch| / max(1, |torch|) per batch size (and sequence length for RNNs), on the
    CPU provider; ``ExportError`` when any exceeds ``PARITY_TOLERANCE``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=[CPU_PROVIDER])
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot load the exported graph: {exc}") from exc
    per_batch = _differences(model, session, held_out, sequence, tolerance=PARITY_TOLERANCE)
    return per_batch, list(session.get_providers())


def _cuda_session(path: Path) -> tuple[Any, str]:
    """An ONNX Runtime session that really runs on the CUDA provider, or (None, why not).

    ONNX Runtime lists CUDA as available wherever onnxruntime-gpu is installed and silently
    falls back to the CPU when CUDA or cuDNN cannot load; loading the provider library first
    answers quietly, and the session's own provider list confirms it.
    """
    import onnxruntime as ort

    if CUDA_PROVIDER not in ort.get_available_providers():
        return None, f"onnxruntime {ort.__version__} has no CUDA provider (the CPU build)"
    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if library.exists():
        try:
            ctypes.CDLL(str(library))
        except OSError as exc:
            return None, f"its library does not load here: {_first_line(exc)}"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            str(path), options, providers=[(CUDA_PROVIDER, {"use_tf32": "0"}), CPU_PROVIDER]
        )
    except Exception as exc:
        return None, f"a session on it failed: {_first_line(exc)}"
    if session.get_providers()[0] != CUDA_PROVIDER:
        return None, "onnxruntime fell back to the CPU (CUDA or cuDNN did not load)"
    return session, ""


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _differences(
    model: torch.nn.Module,
    session: Any,
    held_out: np.ndarray,
    sequence: bool,
    tolerance: float | None = None,
) -> dict[str, float]:
    """``|ORT - torch| / max(1, |torch|)`` per batch (and length) through ``session``; with a
    ``tolerance``, the first batch beyond it is an ``ExportError`` naming it."""
    provider = session.get_providers()[0]
    lengths: list[int | None] = [None]
    if sequence:
        full = int(held_out.shape[1])
        lengths = [full, max(1, full // 2)]
    per_batch: dict[str, float] = {}
    offset = 0
    for length in lengths:
        for batch in PARITY_BATCH_SIZES:
            x = _rows(np.roll(held_out, -offset, axis=0), batch)
            offset += batch
            if length is not None:
                x = np.ascontiguousarray(x[:, -length:])  # the most recent steps
            with torch.no_grad():
                expected = model(torch.from_numpy(x)).numpy()
            try:
                (got,) = session.run(["output"], {"input": x})
            except Exception as exc:
                raise ExportError(
                    f"ONNX Runtime ({provider}) failed at batch size {batch}: {exc}"
                ) from exc
            key = f"batch={batch}" + (f",time={length}" if length is not None else "")
            if got.shape != expected.shape:
                raise ExportError(
                    f"parity check failed at batch size {batch}: ONNX Runtime ({provider}) "
                    f"returned shape {got.shape}, torch {expected.shape}"
                )
            gap = np.abs(got.astype(np.float64) - expected)
            diff = float(np.max(gap / np.maximum(1.0, np.abs(expected))))
            per_batch[key] = diff
            if tolerance is not None and not diff <= tolerance:
                raise ExportError(
                    f"parity check failed at batch size {batch}"
                    + (f", time {length}" if length is not None else "")
                    + f": max |onnx - torch| / max(1, |torch|) = {diff:.3g} > {tolerance:g}"
                )
    return per_batch
