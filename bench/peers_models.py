"""Add the project's own ONNX model to the peer harness, and lay out neuroserve's repository.

The peer harness (``../shared/peer-bench``, copied by ``bench/peers.sh``) exports its own seeded
models (``cnn``, ``fnn``, ``lstm``) and knows only those: every peer reads their shapes from
``models/manifest.json`` and the correctness check reads ``models/<name>/golden.npz``. This
script is the harness's ``MODELS_HOOK``: it runs after ``make_models.py`` has rewritten the
manifest and before ``make_pa_data.py`` turns the golden inputs into perf_analyzer's input data,
and

- copies a model that follows docs/contracts.md (one FP32 input ``input``, one output ``output``,
  dynamic batch axis) to ``models/<name>/model.onnx``;
- writes its golden inputs and ONNX Runtime's outputs for them (batch 1 and 32), so every server
  is checked against the same numbers before it is measured. Image models take raw pixels
  (0..255, contracts.md), so the inputs are seeded integers in that range rather than the
  harness's standard normal, which a real client would never send;
- adds it to the manifest in the harness's format;
- writes ``<repo>/<model>/1/model.onnx`` for every served model, the directory layout
  neuroserve's ``--model-repository`` reads.

Run with the harness venv's python (numpy, onnx, onnxruntime), never the project's: the golden
outputs come from the same onnxruntime build the peers use.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

SEED = 1234  # the harness's seed (make_models.py), so reruns write identical files


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, as the harness records for its own models."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def signature(model: onnx.ModelProto) -> tuple[list[int], list[int]]:
    """Per-sample input and output shapes, after checking the contract the peers rely on.

    Every peer is told one FP32 input named ``input`` and one output named ``output`` with a
    dynamic batch axis; a model that differs would be measured on a wrong request, so it is
    refused here with what was found.
    """

    def dims(value: onnx.ValueInfoProto) -> list[int]:
        shape = value.type.tensor_type.shape.dim
        if not shape or shape[0].dim_value:
            raise SystemExit(f"{value.name!r}: axis 0 must be the dynamic batch axis")
        rest = [d.dim_value for d in shape[1:]]
        if not all(rest):
            raise SystemExit(f"{value.name!r}: only axis 0 may be dynamic, got {shape}")
        return rest

    ins, outs = list(model.graph.input), list(model.graph.output)
    names = ([i.name for i in ins], [o.name for o in outs])
    if names != (["input"], ["output"]):
        raise SystemExit(f"expected one input 'input' and one output 'output', got {names}")
    for value in (ins[0], outs[0]):
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise SystemExit(f"{value.name!r} must be float32 (FP32)")
    return dims(ins[0]), dims(outs[0])


def golden(path: Path, in_shape: list[int]) -> dict[str, np.ndarray]:
    """Seeded raw-pixel inputs at batch 1 and 32 and ONNX Runtime's outputs for them."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(SEED)
    out: dict[str, np.ndarray] = {}
    for batch in (1, 32):
        x = rng.integers(0, 256, size=(batch, *in_shape)).astype(np.float32)
        out[f"x{batch}"] = x
        out[f"y{batch}"] = session.run(["output"], {"input": x})[0]
    return out


def add_model(models_dir: Path, name: str, source: Path) -> dict[str, Any]:
    """Copy ``source`` in as ``models_dir/name`` with golden data; return its manifest entry."""
    model = onnx.load(str(source))
    in_shape, out_shape = signature(model)
    target = models_dir / name / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    with (target.parent / "golden.npz").open("wb") as file:
        np.savez(file, **golden(target, in_shape))  # type: ignore[arg-type]
    return {
        "file": f"{name}/model.onnx",
        "sha256": sha256(target),
        "bytes": target.stat().st_size,
        "input": {"name": "input", "datatype": "FP32", "shape": [-1, *in_shape]},
        "output": {"name": "output", "datatype": "FP32", "shape": [-1, *out_shape]},
        "params": int(sum(np.prod(t.dims) for t in model.graph.initializer)),
        "source": str(source),
    }


def write_repository(repo: Path, models_dir: Path, names: list[str]) -> None:
    """``repo/<name>/1/model.onnx`` for each name, replacing whatever ``repo`` held."""
    if repo.exists():
        shutil.rmtree(repo)
    for name in names:
        target = repo / name / "1" / "model.onnx"
        target.parent.mkdir(parents=True)
        shutil.copyfile(models_dir / name / "model.onnx", target)


def main() -> None:
    """Parse the flags, add each ``--add NAME=PATH`` model, write the repository."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, required=True, help="the harness's models/")
    parser.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an ONNX model to serve under NAME (repeatable)",
    )
    parser.add_argument("--repo", type=Path, required=True, help="neuroserve repository to write")
    parser.add_argument("--models", nargs="+", required=True, help="models the run serves")
    args = parser.parse_args()

    manifest_path = args.models_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for item in args.add:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).is_file():
            raise SystemExit(f"--add expects NAME=PATH to an existing .onnx file, got {item!r}")
        entry = add_model(args.models_dir, name, Path(path))
        manifest["models"][name] = entry
        print(
            f"{name}: params={entry['params']} in={entry['input']['shape']} "
            f"out={entry['output']['shape']} sha256={entry['sha256'][:12]} (from {path})"
        )
    unknown = [m for m in args.models if m not in manifest["models"]]
    if unknown:
        raise SystemExit(f"models {unknown} are in neither the harness nor --add")
    manifest_path.write_text(json.dumps(manifest, indent=2))
    write_repository(args.repo, args.models_dir, args.models)


if __name__ == "__main__":
    main()
