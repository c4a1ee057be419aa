"""OnnxModel (the synchronous API pipelines/ reuses), provider selection and the codecs."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from serving import devices
from serving.codecs import classify
from serving.devices import select_providers
from serving.runtime import OnnxModel
from serving.tokenizer import Tokenizer
from serving.wire import deserialize_bytes_tensor, serialize_bytes_tensor
from tests.serving import onnx_models


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    return onnx_models.save(
        onnx_models.classifier(), tmp_path_factory.mktemp("m") / "classifier.onnx"
    )


def test_onnx_model_surface(classifier_path, caplog):
    with caplog.at_level(logging.INFO, logger="serving"):
        model = OnnxModel(classifier_path)
    assert [(s.name, s.datatype, s.shape) for s in model.inputs] == [("input", "FP32", (-1, 4))]
    assert [(s.name, s.datatype, s.shape) for s in model.outputs] == [("output", "FP32", (-1, 3))]
    assert model.metadata["task"] == "multiclass"
    assert "CPUExecutionProvider" in model.providers
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    out = model.run({"input": x})
    assert set(out) == {"output"}
    np.testing.assert_allclose(out["output"], onnx_models.classifier_reference(x), rtol=1e-5)
    assert model.run({"input": x}, output_names=["output"])["output"].shape == (5, 3)
    lines = [r.message for r in caplog.records if "session_created" in r.message]
    assert len(lines) == 1, "exactly one line about the session and its providers"
    assert "providers=" in lines[0]


def test_onnx_model_multiple_inputs_and_outputs(tmp_path):
    model = OnnxModel(onnx_models.save(onnx_models.two_in_two_out(), tmp_path / "m.onnx"))
    assert model.input_names == ["a", "b"]
    assert model.output_names == ["sum", "product"]
    a, b = np.ones((2, 2), np.float32), np.full((2, 2), 2, np.float32)
    out = model.run({"a": a, "b": b})
    np.testing.assert_array_equal(out["sum"], a + b)
    np.testing.assert_array_equal(out["product"], a * b)


def test_only_onnx_files_are_loaded(tmp_path):
    pickle_file = tmp_path / "model.pkl"
    pickle_file.write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="only ONNX"):
        OnnxModel(pickle_file)


def test_provider_selection_falls_back_quietly(monkeypatch):
    chosen, _notes = select_providers()
    assert chosen[-1] == "CPUExecutionProvider"
    monkeypatch.setattr(
        devices, "_provider_library_loads", lambda p: (p == "CPUExecutionProvider", "libcuda gone")
    )
    chosen, notes = select_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    assert chosen == ["CPUExecutionProvider"]
    assert any("libcuda gone" in note for note in notes)


def test_bytes_tensor_round_trip():
    array = np.array([[b"a", b""], [b"\x00\xff", "é".encode()]], dtype=object)
    raw = serialize_bytes_tensor(array)
    assert deserialize_bytes_tensor(raw) == [b"a", b"", b"\x00\xff", "é".encode()]
    with pytest.raises(ValueError):
        deserialize_bytes_tensor(raw[:-1])


def test_classify_formats_triton_strings():
    probs = np.array([[0.1, 0.7, 0.2]], np.float32)
    out = classify(probs, 2, ["a", "b", "c"])
    assert [v.decode() for v in out[0]] == ["0.700000:1:b", "0.200000:2:c"]
    assert classify(probs, 10, None).shape == (1, 3)


def test_tokenizer_from_metadata():
    model = onnx_models.next_token()
    meta = {p.key: p.value for p in model.metadata_props}
    tok = Tokenizer.from_metadata(meta)
    assert tok is not None
    ids = tok.encode(["The cat sat", "zebra"])
    vocab = onnx_models.VOCAB
    assert ids.tolist() == [
        [vocab.index("the"), vocab.index("cat"), vocab.index("sat")],
        [vocab.index("<pad>"), vocab.index("<pad>"), vocab.index("<unk>")],
    ]
    assert Tokenizer.from_metadata({"task": "multiclass"}) is None


def test_serving_never_imports_torch_training_or_prefect():
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, serving.server, serving.client, serving.cli, serving.sources;"
        "bad = [m for m in ('torch', 'prefect', 'training', 'pipelines') if m in sys.modules];"
        "assert not bad, bad"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
