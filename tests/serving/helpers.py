"""Request builders shared by the serving tests."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from serving._proto import grpc_service_pb2 as pb
from serving.client import encode_inputs


def infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    raw: bool = True,
    outputs: list[str] | None = None,
    classification: int = 0,
    version: str = "",
    request_id: str = "",
) -> pb.ModelInferRequest:
    request = encode_inputs(
        pb.ModelInferRequest(model_name=model, model_version=version, id=request_id), inputs, raw
    )
    for name in outputs or []:
        out = request.outputs.add(name=name)
        if classification:
            out.parameters["classification"].int64_param = classification
    return request


def good_request() -> pb.ModelInferRequest:
    return infer_request("classifier", {"input": np.ones((2, 4), np.float32)})
