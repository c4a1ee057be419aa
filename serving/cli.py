"""Command lines: ``serve`` (the server) and ``predict`` (the client, for people and scripts).

``python -m serving`` and ``neuroserve serve`` both end in ``serve_main``; ``neuroserve predict``
ends in ``predict_main``. Server flags follow Triton's names; every flag left out falls back to
its ``NEUROSERVE_*`` environment variable, then to the default in ``serving/settings.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, get_args

import numpy as np
from pydantic import ValidationError

from serving.client import ClientError, InferenceClient, Prediction
from serving.settings import CaptureImages, CudnnConvAlgoSearch, Device, Settings

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neuroserve serve",
        description="Serve ONNX models over gRPC (KServe v2 / Triton protocol). Without "
        "--model-repository, serves the MLflow registry at MLFLOW_TRACKING_URI.",
        argument_default=argparse.SUPPRESS,
    )
    add = p.add_argument
    add(
        "--model-repository",
        dest="model_repository",
        metavar="DIR",
        help="directory laid out as <model>/<version>/model.onnx",
    )
    add(
        "--model",
        "--model-names",
        dest="model_names",
        metavar="NAMES",
        help="comma-separated models to serve (default: all / every alias holder)",
    )
    add(
        "--tracking-uri",
        dest="mlflow_tracking_uri",
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded SQLite)",
    )
    add("--alias", dest="mlflow_alias", help="registered-model alias to serve (champion)")
    add(
        "--poll-interval",
        dest="poll_interval_s",
        type=float,
        metavar="SECONDS",
        help="repository poll interval; 0 disables (30)",
    )
    add("--host", help="interface to bind (127.0.0.1)")
    add("--grpc-port", dest="grpc_port", type=int, help="gRPC port (8001)")
    add("--http-port", dest="http_port", type=int, help="KServe v2 REST port; -1 off (8000)")
    add("--metrics-port", dest="metrics_port", type=int, help="Prometheus port; -1 off (8002)")
    add("--workers", type=int, metavar="N", help="server processes sharing the port (1)")
    add("--max-batch-size", dest="max_batch_size", type=int, help="largest batch (32)")
    add(
        "--max-queue-delay-us",
        dest="max_queue_delay_us",
        type=int,
        help="how long the batcher may wait for more requests, µs (0)",
    )
    add(
        "--preferred-batch-sizes",
        dest="preferred_batch_sizes",
        metavar="SIZES",
        help="comma-separated batch sizes dispatched at once",
    )
    add("--max-queue-size", dest="max_queue_size", type=int, help="queued requests per model")
    add(
        "--no-batching",
        dest="dynamic_batching",
        action="store_false",
        help="run every request alone",
    )
    add(
        "--max-message-bytes",
        dest="max_message_bytes",
        type=int,
        help="largest gRPC message (64 MiB)",
    )
    add(
        "--tls-cert",
        "--tls-cert-file",
        dest="tls_cert_file",
        metavar="FILE",
        help="PEM server certificate (enables TLS)",
    )
    add(
        "--tls-key",
        "--tls-key-file",
        dest="tls_key_file",
        metavar="FILE",
        help="PEM server private key",
    )
    add(
        "--tls-ca",
        "--tls-ca-file",
        dest="tls_ca_file",
        metavar="FILE",
        help="PEM CA; clients must present a certificate it signed (mTLS)",
    )
    add(
        "--auth-token",
        dest="auth_token",
        metavar="TOKEN",
        help="require 'authorization: Bearer TOKEN' (health stays open); visible in process "
        "listings, so prefer --auth-token-file or NEUROSERVE_AUTH_TOKEN",
    )
    add(
        "--auth-token-file",
        dest="auth_token_file",
        metavar="FILE",
        help="read the inference token from FILE (stripped)",
    )
    add(
        "--admin-token",
        dest="admin_token",
        metavar="TOKEN",
        help="a separate token for model-repository and statistics (default: the auth token)",
    )
    add(
        "--admin-token-file",
        dest="admin_token_file",
        metavar="FILE",
        help="read the admin token from FILE (stripped)",
    )
    add(
        "--admin-can-infer",
        dest="admin_can_infer",
        action="store_true",
        help="let the admin token call inference too (off)",
    )
    add(
        "--device",
        choices=get_args(Device),
        help="where sessions run: cuda (the GPU or nothing: refuses to serve from the CPU), cpu "
        "(never loads GPU libraries), auto (CUDA when it really loads, else CPU) (auto)",
    )
    add(
        "--providers",
        metavar="LIST",
        help="execution providers in order within --device, e.g. "
        "TensorrtExecutionProvider,CUDAExecutionProvider",
    )
    add(
        "--cudnn-conv-algo-search",
        dest="cudnn_conv_algo_search",
        choices=get_args(CudnnConvAlgoSearch),
        help="cuDNN convolution algorithm search on CUDA, run during warm-up (EXHAUSTIVE)",
    )
    add(
        "--cuda-graph",
        dest="cuda_graph",
        action="store_true",
        help="capture and replay each batch size as a CUDA graph (models fully on CUDA) (off)",
    )
    add(
        "--tensorrt-cache-dir",
        dest="tensorrt_cache_dir",
        metavar="DIR",
        help="TensorRT engine and timing cache ($NEUROSERVE_HOME/cache/tensorrt)",
    )
    add(
        "--worker-gpus",
        dest="worker_gpus",
        metavar="LIST",
        help="GPU indices the workers are spread over, one each, e.g. 0,1 (all see every GPU)",
    )
    add("--intra-op-threads", dest="intra_op_threads", type=int, help="ORT intra-op threads")
    add("--inter-op-threads", dest="inter_op_threads", type=int, help="ORT inter-op threads")
    add(
        "--grace-period",
        dest="grace_period_s",
        type=float,
        metavar="SECONDS",
        help="time in-flight requests get on SIGTERM (10)",
    )
    add(
        "--inline-compute-us",
        dest="inline_compute_us",
        type=int,
        help="run session calls faster than this on the event loop; 0 never (150)",
    )
    add(
        "--trace-rate",
        dest="trace_rate",
        type=float,
        metavar="FRACTION",
        help="OpenTelemetry: fraction of requests traced, 0-1; 0 off (0)",
    )
    add(
        "--otlp-endpoint",
        dest="otlp_endpoint",
        metavar="URL",
        help="OTLP/gRPC collector for spans, e.g. http://127.0.0.1:4317 (default: stderr)",
    )
    add(
        "--capture-rate",
        dest="capture_rate",
        metavar="RATES",
        help="inference capture: fraction of requests written to Parquet, 0-1, and MODEL=RATE "
        "overrides, e.g. 0.1,digits-cnn=1; 0 off (0)",
    )
    add(
        "--capture-dir",
        dest="capture_dir",
        metavar="DIR|S3_URI",
        help="where captures go: a directory or s3://bucket/prefix ($NEUROSERVE_HOME/captures)",
    )
    add(
        "--capture-images",
        dest="capture_images",
        choices=get_args(CaptureImages),
        help="image inputs as per-image statistics, or statistics and pixels (summary)",
    )
    add(
        "--capture-roll-size",
        dest="capture_roll_size_mb",
        type=float,
        metavar="MIB",
        help="close a capture file at this size (64)",
    )
    add(
        "--capture-roll-interval",
        dest="capture_roll_interval_s",
        type=float,
        metavar="SECONDS",
        help="close a capture file after this long (300)",
    )
    add(
        "--capture-buffer",
        dest="capture_buffer_mb",
        type=float,
        metavar="MIB",
        help="memory for samples awaiting the writer; beyond it they are dropped (64)",
    )
    add(
        "--no-fast-paths",
        dest="fast_paths",
        action="store_false",
        help="turn every request-path shortcut off (serving/README.md); for checks and bisecting",
    )
    add("--log-level", dest="log_level", help="INFO, DEBUG, WARNING ...")
    return p  # fmt: skip


def settings_from_args(argv: list[str] | None = None) -> Settings:
    """Parse serve flags into Settings (flags override env vars, which override defaults)."""
    args = vars(_serve_parser().parse_args(argv))
    return Settings(**args)


def serve_main(argv: list[str] | None = None) -> int:
    """Entry point of ``neuroserve serve`` / ``python -m serving``; returns the exit code."""
    from serving.server import run

    try:
        settings = settings_from_args(argv)
    except ValidationError as exc:
        # Not str(exc): pydantic echoes the whole input, tokens included.
        lines = [
            f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        ]
        print("invalid server settings:\n" + "\n".join(lines), file=sys.stderr)
        return 2
    from serving.devices import DeviceUnavailableError

    try:
        return run(settings)
    except (OSError, ValueError, DeviceUnavailableError) as exc:
        print(f"neuroserve serve: {exc}", file=sys.stderr)
        return 1


# --------------------------------------------------------------------------- predict
def _predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neuroserve predict",
        description="Send a file to a served model and print its predictions.",
    )
    p.add_argument("model", help="model name on the server")
    p.add_argument(
        "--input", "-i", required=True, type=Path, metavar="FILE",
        help=".npy array, .csv table (one row per example), an image, or .txt (one text per line)",
    )  # fmt: skip
    p.add_argument("--top-k", "-k", type=int, default=None, help="top-k labels (classifiers)")
    p.add_argument("--url", default="127.0.0.1:8001", help="server host:port (127.0.0.1:8001)")
    p.add_argument("--token", default=None, help="bearer token, if the server requires one")
    p.add_argument("--ca", default=None, help="PEM CA to verify a TLS server")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (30)")
    return p


def _load_csv(path: Path) -> np.ndarray:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    try:
        float(lines[0].split(",")[0])
        start = 0
    except ValueError:
        start = 1  # a header row
    return np.array([[float(v) for v in ln.split(",")] for ln in lines[start:]], dtype=np.float32)


def _load_image(path: Path, shape: list[int]) -> np.ndarray:
    from PIL import Image

    channels, height, width = (shape[-3], shape[-2], shape[-1]) if len(shape) >= 3 else (1, -1, -1)
    with Image.open(path) as original:
        converted = original.convert("L" if channels == 1 else "RGB")
    if height > 0 and width > 0:
        converted = converted.resize((width, height))
    pixels = np.asarray(converted, dtype=np.float32)
    chw = pixels[np.newaxis] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return chw[np.newaxis]


def load_input(path: Path, input_shape: list[int]) -> Any:
    """Read an input file into what the client sends (a batch, or texts)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".csv":
        return _load_csv(path)
    if suffix == ".txt":
        return np.array([ln for ln in path.read_text().splitlines() if ln.strip()], dtype=object)
    if suffix in _IMAGE_SUFFIXES:
        return _load_image(path, input_shape)
    raise ValueError(f"unsupported input file type {suffix!r}: use .npy, .csv, .txt or an image")


def _print_topk(model: str, rows: list[list[Prediction]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for i, row in enumerate(rows):
            for rank, p in enumerate(row, 1):
                print(f"{i}\t{rank}\t{p.label or p.index}\t{p.score:.4f}")
        return
    table = Table(title=f"{model}: top {len(rows[0]) if rows else 0}")
    for col in ("example", "rank", "label", "index", "score"):
        table.add_column(col, justify="right" if col in {"rank", "index", "score"} else "left")
    for i, row in enumerate(rows):
        for rank, p in enumerate(row, 1):
            table.add_row(str(i), str(rank), p.label or "-", str(p.index), f"{p.score:.4f}")
    Console().print(table)


def _batches(data: Any, limit: int, rank: int) -> list[Any]:
    """A file's examples in requests the model accepts (at most ``max_batch_size`` each), so a
    300-row CSV is sent, not refused; one example, or a model without a limit, is one request."""
    batched = isinstance(data, list) or (isinstance(data, np.ndarray) and data.ndim == rank)
    if limit <= 0 or not batched or len(data) <= limit:
        return [data]
    return [data[start : start + limit] for start in range(0, len(data), limit)]


def predict_main(argv: list[str] | None = None) -> int:
    """Entry point of ``neuroserve predict``; returns the exit code."""
    args = _predict_parser().parse_args(argv)
    try:
        with InferenceClient(
            args.url, token=args.token, timeout=args.timeout, root_certificates=args.ca
        ) as client:
            meta = client.model_metadata(args.model)
            shape = list(meta.inputs[0].shape) if meta.inputs else []
            data = load_input(args.input, shape)
            config = client.model_config(args.model).config
            k = args.top_k
            if k is None:  # classifiers default to their top 3, other models print values
                k = 3 if "labels" in config.parameters or "vocabulary" in config.parameters else 0
            parts = _batches(data, config.max_batch_size, len(shape))
            if k:
                _print_topk(
                    args.model, [p for part in parts for p in client.top_k(args.model, part, k)]
                )
            else:
                results = [client.predict(args.model, part) for part in parts]
                result = results[0] if len(results) == 1 else np.concatenate(results)
                np.set_printoptions(precision=6, suppress=True)
                print(result)
    except ClientError as exc:
        print(f"neuroserve predict: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"neuroserve predict: {exc}", file=sys.stderr)
        return 2
    return 0
