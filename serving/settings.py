"""Server settings (pydantic-settings, env prefix ``NEUROSERVE_``) and the local-state paths.

Every knob of the server lives here, once, with its default and the reason for it; the command
line (``serving/cli.py``) maps Triton-style flags onto these fields, and every field also reads
from the environment (``NEUROSERVE_GRPC_PORT=9001``). ``home_dir()`` and ``default_tracking_uri()``
are the one place that computes where local state lives (docs/contracts.md); pipelines/ imports
them too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Default size limit for one gRPC message, both directions. Triton-style clients send whole
#: image batches in one message; gRPC's own 4 MiB default is far too small for that.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def home_dir() -> Path:
    """Return ``$NEUROSERVE_HOME`` (default ``~/.neuroserve``), created if missing.

    All local state lives below it: ``mlflow.db``, ``mlartifacts/``, ``prefect/``, ``cache/``.
    """
    path = Path(os.environ.get("NEUROSERVE_HOME") or "~/.neuroserve").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_tracking_uri() -> str:
    """Return the embedded MLflow store: ``sqlite:///$NEUROSERVE_HOME/mlflow.db``."""
    return f"sqlite:///{home_dir() / 'mlflow.db'}"


#: How capture writes image inputs (``capture_images``): statistics per image, or those plus
#: the pixels.
CaptureImages = Literal["summary", "pixels"]

#: Where sessions run (``Settings.device``); serving/devices.py's ``plan_providers`` is the rule
#: that turns it, with ``Settings.providers``, into the providers a session asks for.
Device = Literal["auto", "cpu", "cuda"]

#: cuDNN's convolution algorithm search (the CUDA provider's ``cudnn_conv_algo_search``).
CudnnConvAlgoSearch = Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"]

#: The key of the default rate in ``Settings.capture_rate``.
ALL_MODELS = "*"

_CAPTURE_RATE_SYNTAX = (
    "--capture-rate (NEUROSERVE_CAPTURE_RATE) expects RATE and/or MODEL=RATE items separated by "
    "commas, each rate a number from 0 to 1 (e.g. 0.1,digits-cnn=1)"
)


def _rate(text: object, item: str) -> float:
    try:
        rate = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{_CAPTURE_RATE_SYNTAX}; {item!r} is not a number") from None
    if not 0.0 <= rate <= 1.0:  # also rejects NaN
        raise ValueError(f"{_CAPTURE_RATE_SYNTAX}; {item!r} is outside 0..1")
    return rate


def parse_capture_rates(value: object) -> dict[str, float]:
    """``"0.1,digits-cnn=1"`` (or a number, or a mapping) -> ``{"*": 0.1, "digits-cnn": 1.0}``.

    The one parser of the ``--capture-rate`` syntax; a bad item raises ``ValueError`` naming the
    flag, the item and what was expected.
    """
    if value is None:
        return {}
    if isinstance(value, bool):
        raise ValueError(f"{_CAPTURE_RATE_SYNTAX}; got {value!r}")
    if isinstance(value, int | float):
        return {ALL_MODELS: _rate(value, str(value))}
    if isinstance(value, Mapping):
        return {str(k): _rate(v, f"{k}={v}") for k, v in value.items()}
    if not isinstance(value, str):
        raise ValueError(f"{_CAPTURE_RATE_SYNTAX}; got {type(value).__name__}")
    rates: dict[str, float] = {}
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        model, sep, text = item.rpartition("=")
        model = model.strip() if sep else ALL_MODELS
        if sep and not model:
            raise ValueError(f"{_CAPTURE_RATE_SYNTAX}; {item!r} names no model")
        if model in rates:
            which = "the default rate" if model == ALL_MODELS else f"model {model!r}"
            raise ValueError(f"{_CAPTURE_RATE_SYNTAX}; {which} is given twice")
        rates[model] = _rate(text.strip(), item)
    return rates


def _split_csv(value: object) -> object:
    """Accept ``"a,b"`` as well as a list, so env vars and flags can name several items."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Settings of one server process (all worker processes share the same values)."""

    model_config = SettingsConfigDict(
        env_prefix="NEUROSERVE_",
        extra="ignore",
        populate_by_name=True,
        use_attribute_docstrings=True,
    )

    # --- where models come from -------------------------------------------------------------
    model_repository: Path | None = None
    """Directory laid out as ``<root>/<model>/<version>/model.onnx``. When unset, the server
    serves the MLflow registry at ``mlflow_tracking_uri`` instead."""

    model_names: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Models to serve (comma-separated in env/flags). Empty: every model in the directory, or
    every registered model that has the alias ``mlflow_alias``."""

    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "mlflow_tracking_uri", "NEUROSERVE_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"
        ),
    )
    """MLflow tracking/registry URI; also read from ``MLFLOW_TRACKING_URI``. Default: the
    embedded SQLite store ``default_tracking_uri()``."""

    mlflow_alias: str = "champion"
    """Registered-model alias to serve; the quality gate in pipelines/ moves it."""

    poll_interval_s: float = 30.0
    """Seconds between polls of the repository (new directory versions, moved MLflow aliases).
    0 disables polling; RepositoryModelLoad still reloads on demand."""

    cache_dir: Path | None = None
    """Where MLflow artifacts are cached so a restart while MLflow is down still serves the last
    known versions. Default: ``$NEUROSERVE_HOME/cache``."""

    # --- network ------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    """Interface to bind. Loopback by default: exposing the server is a deliberate choice."""

    grpc_port: int = 8001
    """gRPC port (Triton's default, so client examples work unchanged). 0 picks a free port."""

    http_port: int = 8000
    """KServe v2 REST port (Triton's default). 0 picks a free port; -1 disables REST."""

    metrics_port: int = 8002
    """Prometheus metrics HTTP port (Triton's default). 0 picks a free port; -1 disables."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest request or response accepted or sent, in bytes, on either transport: a larger
    gRPC message gets RESOURCE_EXHAUSTED, a larger HTTP body 413."""

    workers: int = 1
    """Server processes sharing the port through SO_REUSEPORT, each with its own sessions; the
    kernel spreads connections across them, sidestepping the GIL on the request path."""

    grace_period_s: float = 10.0
    """On SIGTERM: seconds to let in-flight requests finish before the process exits."""

    # --- security -----------------------------------------------------------------------------
    tls_cert_file: Path | None = None
    """PEM server certificate; with ``tls_key_file`` turns TLS on."""

    tls_key_file: Path | None = None
    """PEM private key of ``tls_cert_file``."""

    tls_ca_file: Path | None = None
    """PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."""

    auth_token: SecretStr | None = None
    """Bearer token required in ``authorization`` metadata on every call except health (live,
    ready). Without ``admin_token`` it also guards model-repository and statistics. Unset or
    empty: no authentication (fine on loopback, not on a network)."""

    auth_token_file: Path | None = None
    """File holding ``auth_token`` (surrounding whitespace stripped), so the token stays out of
    process listings and environment dumps; set this or ``auth_token``, not both."""

    admin_token: SecretStr | None = None
    """Bearer token for the control plane: model-repository (index, load, unload) and
    statistics. Set, the inference token gets PERMISSION_DENIED there. Unset or empty: the
    control plane follows ``auth_token``, and the server logs that at start-up."""

    admin_token_file: Path | None = None
    """File holding ``admin_token`` (stripped); set this or ``admin_token``, not both."""

    admin_can_infer: bool = False
    """Let the admin token call inference too. Off: it gets PERMISSION_DENIED there, so the
    operators' token is never worth putting in an application."""

    # --- batching -----------------------------------------------------------------------------
    dynamic_batching: bool = True
    """Merge concurrent requests into one session call. Off: each request runs alone."""

    max_batch_size: int = 32
    """Largest batch one session call takes, and largest batch a single request may carry."""

    max_queue_delay_us: int = 0
    """How long the batcher may wait for more requests after the first one arrives, in µs.
    0 (Triton's default) never waits: requests that arrive while a batch computes form the next
    batch, so batches grow with load and an idle server adds no latency."""

    preferred_batch_sizes: Annotated[list[int], NoDecode] = Field(default_factory=list)
    """Batch sizes to dispatch at as soon as reached, without waiting out the delay."""

    max_queue_size: int = 1024
    """Requests waiting per model before new ones are refused with RESOURCE_EXHAUSTED."""

    # --- ONNX Runtime -------------------------------------------------------------------------
    providers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Execution providers in order of preference, e.g. ``TensorrtExecutionProvider,
    CUDAExecutionProvider,CPUExecutionProvider``. Empty: CUDA when it can actually load, else
    CPU; TensorRT only when asked for."""

    device: Device = "auto"
    """Where sessions run. ``cuda``: on the GPU or not at all: a version whose session does not
    really run the CUDA provider (or TensorRT, when ``providers`` names it) is refused, and at
    start-up the server exits with one line naming the library that failed to load and the CUDA
    and cuDNN majors this onnxruntime build expects. ``cpu``: never loads a GPU library.
    ``auto``: CUDA when it really loads, else the CPU, and each load's log line says which.
    ``providers`` only chooses and orders providers within this choice."""

    cudnn_conv_algo_search: CudnnConvAlgoSearch = "EXHAUSTIVE"
    """cuDNN's convolution algorithm search on the CUDA provider: ``EXHAUSTIVE`` benchmarks every
    algorithm once per input shape (the fastest kernels; the search runs during warm-up, before
    the version takes traffic), ``HEURISTIC`` picks one without benchmarking (faster loads),
    ``DEFAULT`` always uses implicit GEMM."""

    cuda_graph: bool = False
    """Capture each batch size's run as a CUDA graph and replay it (the CUDA provider's
    ``enable_cuda_graph``): fewer kernel launches per call. Only for models whose every node runs
    on CUDA; a session ONNX Runtime refuses to build that way fails to load (``device=cuda``) or
    falls back to the CPU with a note (``auto``)."""

    tensorrt_cache_dir: Path | None = None
    """Where the TensorRT provider (when ``providers`` names it) keeps built engines and its
    timing cache, so a restart reuses them instead of rebuilding for minutes. Default:
    ``tensorrt/`` in ``cache_dir`` (``$NEUROSERVE_HOME/cache/tensorrt``)."""

    worker_gpus: Annotated[list[int], NoDecode] = Field(default_factory=list)
    """GPU indices the ``workers`` are spread over, round-robin, one per worker through
    ``CUDA_VISIBLE_DEVICES`` (e.g. ``0,1``). Empty: every worker sees every GPU and runs on the
    first, each with its own sessions."""

    intra_op_threads: int = 0
    """Threads inside one operator. 0: usable CPU cores divided by ``workers`` (at least 1), so
    worker processes do not oversubscribe the machine."""

    inter_op_threads: int = 1
    """Threads running independent operators in parallel (1: sequential execution)."""

    inline_compute_us: int = 150
    """Session calls measured faster than this (µs, moving average) run on the event loop
    instead of the compute thread: for tiny models the thread hand-off (Python overhead on both
    sides) costs more than it saves. A process limited to one core (e.g. by ``taskset``) runs
    calls up to 3 ms inline, since the thread could not overlap the loop. 0 always uses the
    compute thread."""

    fast_paths: bool = True
    """The request path's shortcuts: learned request templates, the one-input fast decoder,
    computing tiny models on the event loop, running a lone request at once, and the cached
    response header (serving/README.md lists them). Off, every request takes the plain path;
    answers and statuses are the same either way, which the tests check."""

    warmup: bool = True
    """Run dummy batches through each new session before it takes traffic, so the first real
    request does not pay for lazy initialisation: one batch on the CPU; on a GPU every batch size
    the batcher can form (1 to ``max_batch_size``), so cuDNN's algorithm search, IO-binding
    buffers and CUDA graphs are all set up off the request path."""

    # --- tracing ------------------------------------------------------------------------------
    trace_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Fraction of requests traced with OpenTelemetry (needs the ``tracing`` extra). 0, the
    default, turns tracing off entirely: no tracer exists and requests pay nothing. A caller's
    sampled W3C ``traceparent`` is followed whatever the rate, once tracing is on."""

    otlp_endpoint: str | None = None
    """Where spans go: an OTLP/gRPC collector such as ``http://127.0.0.1:4317`` (Jaeger, the
    OpenTelemetry Collector). Unset with tracing on: spans are printed to stderr."""

    # --- inference capture (serving/capture.py) ---------------------------------------------
    capture_rate: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    """Fraction of inference requests whose rows (inputs, outputs, ids, time, latency) are
    written to Parquet: ``RATE`` for every model and ``MODEL=RATE`` for one, comma-separated,
    e.g. ``0.1,digits-cnn=1``. Empty or 0, the default, turns capture off: no writer thread, no
    pyarrow import, one test per request. Held as ``{"*": default, model: rate}``."""

    capture_dir: str | None = None
    """Where captured rows go: a directory, or ``s3://bucket/prefix`` (credentials and endpoint
    from ``AWS_*``, ``AWS_ENDPOINT_URL`` or ``MLFLOW_S3_ENDPOINT_URL``, so the compose stack's
    MinIO works). Default: ``$NEUROSERVE_HOME/captures``."""

    capture_images: CaptureImages = "summary"
    """Image inputs as per-image pixel statistics (``summary``: mean, std, min, max,
    percentiles, per-channel means) or, ``pixels``, those plus every pixel. Summary keeps files
    small and is what drift checks on images compare."""

    capture_roll_size_mb: float = Field(default=64.0, gt=0)
    """A capture file is closed (and a new one begun) once it reaches this size, in MiB."""

    capture_roll_interval_s: float = Field(default=300.0, gt=0)
    """... or once it has been open this long, in seconds: rows become readable within about
    this interval, and a crash loses at most its last interval's rows."""

    capture_buffer_mb: float = Field(default=64.0, gt=0)
    """Memory the sampled requests may hold while they wait for the writer thread, in MiB. When
    it is full, new samples are dropped and counted (``neuroserve_capture_dropped_total``):
    requests never wait for the writer."""

    # --- identity and logging ----------------------------------------------------------------
    server_name: str = "neuroserve"
    """Name reported by ServerMetadata."""

    log_level: str = "INFO"
    """Python logging level of the ``serving`` logger."""

    @field_validator(
        "model_names", "providers", "preferred_batch_sizes", "worker_gpus", mode="before"
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("capture_rate", mode="before")
    @classmethod
    def _capture_rates(cls, value: object) -> object:
        return parse_capture_rates(value)

    @field_validator("capture_dir")
    @classmethod
    def _capture_location(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        scheme, sep, rest = value.partition("://")
        if sep and scheme != "s3":
            raise ValueError(
                f"--capture-dir expects a directory or s3://bucket/prefix, got scheme {scheme!r}"
            )
        if sep and not rest.split("/", 1)[0]:
            raise ValueError(f"--capture-dir {value!r} names no bucket: use s3://bucket/prefix")
        return value

    @field_validator("auth_token", "admin_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # An empty variable (``NEUROSERVE_AUTH_TOKEN=`` in .env.example, ``${VAR:-}`` in
        # docker-compose.yml) means "not set", as the example file documents.
        return None if value == "" else value

    @model_validator(mode="after")
    def _token_files(self) -> Settings:
        for name in ("auth_token", "admin_token"):
            path: Path | None = getattr(self, f"{name}_file")
            if path is None:
                continue
            if getattr(self, name) is not None:
                raise ValueError(f"set {name} or {name}_file, not both")
            try:
                token = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"{name}_file {str(path)!r} could not be read: {exc}") from None
            if not token:
                raise ValueError(
                    f"{name}_file {str(path)!r} is empty; write the token into it, or unset "
                    f"{name}_file to run without one"
                )
            setattr(self, name, SecretStr(token))
        return self

    @model_validator(mode="after")
    def _device_and_providers(self) -> Settings:
        # serving/devices.py holds the rule (and the provider names); imported only when the
        # two settings could contradict each other, so the defaults never import onnxruntime.
        if self.device != "auto" or self.providers:
            from serving.devices import check_device_providers

            check_device_providers(self.device, self.providers)
        return self

    @field_validator("worker_gpus")
    @classmethod
    def _gpu_indices(cls, value: list[int]) -> list[int]:
        if any(index < 0 for index in value):
            raise ValueError(f"GPU indices are 0 or more, got {value}")
        return value

    @field_validator("max_batch_size", "workers", "max_queue_size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return value

    def tracking_uri(self) -> str:
        """The MLflow URI to serve from (explicit setting, else the embedded default)."""
        return self.mlflow_tracking_uri or default_tracking_uri()

    def resolved_cache_dir(self) -> Path:
        """The artifact cache directory (explicit setting, else ``$NEUROSERVE_HOME/cache``)."""
        return self.cache_dir or home_dir() / "cache"

    def resolved_tensorrt_cache_dir(self) -> Path:
        """TensorRT's engine and timing cache (explicit setting, else under the cache dir)."""
        return self.tensorrt_cache_dir or self.resolved_cache_dir() / "tensorrt"

    def capture_on(self) -> bool:
        """True when some model's requests are captured (any rate above 0)."""
        return any(rate > 0 for rate in self.capture_rate.values())

    def capture_rate_of(self, model: str) -> float:
        """The capture rate of ``model``: its own override, else the default for all."""
        rates = self.capture_rate
        return rates.get(model, rates.get(ALL_MODELS, 0.0))

    def resolved_capture_dir(self) -> str:
        """The capture location (explicit setting, else ``$NEUROSERVE_HOME/captures``)."""
        return self.capture_dir or str(home_dir() / "captures")

    def resolved_intra_op_threads(self) -> int:
        """Explicit thread count for ONNX Runtime's intra-op pool."""
        if self.intra_op_threads > 0:
            return self.intra_op_threads
        # The cores this process may use (``taskset``, a container's cpuset), not the machine's:
        # more ORT threads than cores only makes them take turns.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, (cores or 1) // self.workers)

    def tls_enabled(self) -> bool:
        """True when both a certificate and its key are configured."""
        return self.tls_cert_file is not None and self.tls_key_file is not None
