"""Monitoring: compare what a served model version sees with what it learned from.

The train flow stores a *reference profile* with each run (:func:`reference_profile`, the
artifact :data:`REFERENCE_ARTIFACT`): training inputs and the test split's inputs with the
exported model's own predictions, in the layout the server captures (``serving/capture.py``).
The monitor flow reads a version's recent captures, compares them with its profile
(``pipelines/drift.py``), records the verdict, and starts retraining when drift is found; the
retrained version goes through the quality gate like any other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    import training

#: Where a run keeps its reference profile.
REFERENCE_ARTIFACT = "reference/profile.parquet"
#: Rows of each split a reference profile keeps (a seeded sample when there are more).
REFERENCE_ROWS = 5000


def reference_profile(
    onnx_path: str, result: training.TrainResult, name: str, version: str
) -> pa.Table:
    """Training inputs (``source=train``) and test inputs with the ONNX model's predictions
    (``source=test``), in the capture layout of this model version."""
    import onnxruntime as ort
    import pyarrow as pa

    from serving.capture import CaptureLayout, capture_rows

    layout = CaptureLayout.from_onnx(onnx_path, name, version)
    (inp,), out = layout.inputs, layout.outputs[0]
    rng = np.random.default_rng(int(result.spec.seed))

    def sample(x: Any) -> np.ndarray:
        x = np.asarray(x)
        if len(x) <= REFERENCE_ROWS:
            return x.astype(inp.dtype)
        return x[np.sort(rng.choice(len(x), REFERENCE_ROWS, replace=False))].astype(inp.dtype)

    x_train, x_test = sample(result.data.x_train), sample(result.data.x_test)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    y_test = session.run([out.name], {inp.name: x_test})[0]
    return pa.concat_tables(
        [
            capture_rows(layout, {inp.name: x_train}, {}, source="train"),
            capture_rows(layout, {inp.name: x_test}, {out.name: y_test}, source="test"),
        ]
    )
