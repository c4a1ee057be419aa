"""The compose stack for real: Postgres, an S3 API, the MLflow and Prefect servers, a Prefect
worker, the gRPC server and the CLI, as processes wired from docker-compose.yml (tests/integration/
stack.py says how), through the whole loop and the faults a deployed stack sees.

Every service is started once for the module, on loopback and free ports, and stopped at its
end. The tests run in file order and build on each other (the first trained version is what the
server loads, the deployment retrains it, the faults come last, the bucket's last of all), as a
team's stack lives; each one asserts only what its name says.

What the compose file is not asked here: the images themselves (no engine), MinIO's own server
(moto's stands in), GPU serving (the serving image's CUDA base), and Prometheus (tested against
the server's metrics elsewhere).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.stack import (
    S3,
    Addresses,
    Compose,
    Postgres,
    Process,
    base_env,
    http_ok,
    post_json,
    postgres_bin,
    stop_all,
    wait_until,
)
from tests.ports import free_port

pytestmark = pytest.mark.stack

PG_BIN = postgres_bin()
if PG_BIN is None:
    pytest.skip(
        "PostgreSQL's server programs are not installed (apt-get install postgresql); the stack "
        "tests run its initdb and pg_ctl",
        allow_module_level=True,
    )
if os.geteuid() != 0 or shutil.which("runuser") is None:
    pytest.skip(
        "the stack tests start PostgreSQL as the 'postgres' account with runuser, which needs root",
        allow_module_level=True,
    )

MODEL = "wine-fnn"  # the default registered name of `neuroserve train fnn --data wine`
#: A CLI command's limit: imports, the data, a short training, the MLflow and Prefect calls.
CLI_TIMEOUT_S = 300


@dataclass
class Stack:
    """The running services and how to reach them."""

    compose: Compose
    tmp: Path
    logs: Path
    ports: dict[int, int]
    pg: Postgres
    s3: S3
    bucket: str
    s3_keys: tuple[str, str]
    mlflow: Process
    prefect: Process
    app_dir: Path
    processes: list[Process] = field(default_factory=list)

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[5000]}"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.ports[4200]}/api"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports[8001]}"

    def addresses(self, service: str, extra: dict[str, Path] | None = None) -> Addresses:
        """This service's addresses: the shared ports, its named volumes as folders."""
        paths = {
            target: self.tmp / "volumes" / source
            for source, target in self.compose.volumes(service)
            if not source.startswith((".", "/"))
        }
        paths.update(extra or {})
        return Addresses(self.ports, paths)

    def service_env(self, service: str, extra: dict[str, Path] | None = None) -> dict[str, str]:
        """The image's ENV, then the compose file's environment, localized, on a clean base.

        ``PREFECT_HOME`` is the container's own home folder, which a container has by itself.
        """
        spec = self.compose.service(service)
        image_env = self.compose.dockerfile(service).env if "build" in spec else {}
        env = {**image_env, **self.compose.environment(service)}
        home = self.tmp / "homes" / service
        home.mkdir(parents=True, exist_ok=True)
        return {
            **base_env(),
            "PREFECT_HOME": str(home / ".prefect"),
            **self.addresses(service, extra).env(env),
        }

    def worker_env(self) -> dict[str, str]:
        """The training image's environment as the compose file sets it for the worker; the
        CLI runs in it too (``docker compose run prefect-worker neuroserve ...``)."""
        workdir = self.compose.dockerfile("prefect-worker").workdir
        return self.service_env("prefect-worker", {workdir: self.app_dir})

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """``neuroserve ARGS`` in the training image's environment and work dir."""
        result = subprocess.run(
            ["neuroserve", *args],
            env={**self.worker_env(), **(env or {})},
            cwd=self.app_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return result

    def mlflow_client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.mlflow_url, registry_uri=self.mlflow_url)

    def s3_client(self) -> Any:
        return self.s3.client(*self.s3_keys)

    def start_mlflow(self) -> None:
        """The compose file's mlflow command and environment; waits for its own health check."""
        self.mlflow = Process(
            "mlflow",
            self.addresses("mlflow").argv(self.compose.command("mlflow")),
            self.service_env("mlflow"),
            self.logs,
            cwd=self.tmp / "homes" / "mlflow",
        ).start()
        self.processes.append(self.mlflow)
        self.wait_healthy("mlflow", self.mlflow, 180)

    def healthcheck(self, service: str) -> subprocess.CompletedProcess[str]:
        """Run the service's own compose health check (localized) once."""
        addresses = self.addresses(service)
        argv = addresses.argv(self.compose.healthcheck(service))
        env = self.pg.client_env() if service == "postgres" else base_env()
        env.update(addresses.env(self.compose.environment(service)))
        return subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=30, check=False, cwd=ROOT_DIR
        )

    def wait_healthy(self, service: str, process: Process, timeout: float) -> float:
        return wait_until(
            lambda: self.healthcheck(service).returncode == 0,
            f"passing health check of {service}",
            timeout,
            process,
            interval=1.0,
        )


ROOT_DIR = Path(__file__).resolve().parents[2]


def _start_postgres(compose: Compose, port: int) -> Postgres:
    """initdb and pg_ctl as the postgres account, then the image entry point's first-start steps:
    the ``POSTGRES_DB`` database and the mounted init scripts, run by psql as the image does."""
    env = compose.environment("postgres")
    assert PG_BIN is not None
    pg = Postgres(PG_BIN, port, env["POSTGRES_USER"], env["POSTGRES_PASSWORD"])
    pg.init()
    pg.start()
    pg.run("createdb", env["POSTGRES_DB"])
    for source, target in compose.volumes("postgres"):
        if target.startswith("/docker-entrypoint-initdb.d/") and target.endswith(".sql"):
            pg.run("psql", "-v", "ON_ERROR_STOP=1", "-d", env["POSTGRES_DB"], "-f",
                   str(ROOT_DIR / source))  # fmt: skip
    return pg


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Postgres, the bucket, the MLflow server and the Prefect server, as compose starts them."""
    import importlib.util

    for module, why in (("psycopg2", "MLflow's Postgres backend"), ("asyncpg", "Prefect's"),
                        ("boto3", "MLflow's S3 artifacts")):  # fmt: skip
        assert importlib.util.find_spec(module), f"{module} ({why}) is missing from the dev extra"
    compose = Compose()
    tmp = tmp_path_factory.mktemp("stack")
    logs = tmp / "logs"
    logs.mkdir()
    # Every port the compose file names, to a free loopback port.
    ports = {p: free_port() for p in (5432, 9000, 5000, 4200, 8000, 8001, 8002)}
    pg = _start_postgres(compose, ports[5432])
    s3 = S3(ports[9000], logs)
    processes: list[Process] = [s3.process]
    stack_ = None
    try:
        s3.start()
        # minio-init: `mc mb --ignore-existing local/$MLFLOW_BUCKET` with the root credentials.
        init = compose.environment("minio-init")
        keys = (init["MINIO_ROOT_USER"], init["MINIO_ROOT_PASSWORD"])
        s3.client(*keys).create_bucket(Bucket=init["MLFLOW_BUCKET"])
        worker_image = compose.dockerfile("prefect-worker")
        app_dir = worker_image.build_context(tmp / "app")
        stack_ = Stack(
            compose, tmp, logs, ports, pg, s3, init["MLFLOW_BUCKET"], keys,
            mlflow=None, prefect=None, app_dir=app_dir, processes=processes,  # type: ignore[arg-type]
        )  # fmt: skip
        # The Prefect server boots while MLflow migrates its database: both on Postgres.
        env = stack_.service_env("prefect-server")
        env["PREFECT_SERVER_API_PORT"] = str(ports[4200])  # the compose default, 4200, mapped
        stack_.prefect = Process(
            "prefect-server",
            stack_.addresses("prefect-server").argv(compose.command("prefect-server")),
            env,
            logs,
            cwd=tmp / "homes" / "prefect-server",
        ).start()
        processes.append(stack_.prefect)
        stack_.start_mlflow()
        stack_.wait_healthy("prefect-server", stack_.prefect, 240)
        yield stack_
    finally:
        stop_all(stack_.processes if stack_ else processes)
        pg.cleanup()


def _latest_flow_run(stack: Stack, flow_name: str) -> dict[str, Any]:
    runs = post_json(
        stack.prefect_api + "/flow_runs/filter",
        {"flows": {"name": {"any_": [flow_name]}}, "sort": "EXPECTED_START_TIME_DESC", "limit": 1},
    )
    assert runs, f"the Prefect server has no run of flow {flow_name!r}"
    return dict(runs[0])


def _bucket_keys(stack: Stack) -> list[str]:
    pages = stack.s3_client().get_paginator("list_objects_v2").paginate(Bucket=stack.bucket)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _onnx_in_bucket(stack: Stack, name: str, version: str) -> bytes:
    """The version's ONNX file, read from the bucket where its proxied location points."""
    location = stack.mlflow_client().get_model_version_download_uri(name, version)
    assert location.startswith("mlflow-artifacts:/"), (
        f"{name} v{version} is stored at {location}, not behind the server's artifact proxy"
    )
    prefix = location.removeprefix("mlflow-artifacts:").strip("/")
    keys = [k for k in _bucket_keys(stack) if k.startswith(prefix + "/") and k.endswith(".onnx")]
    assert len(keys) == 1, f"ONNX files under {prefix} in the bucket: {keys}"
    body = stack.s3_client().get_object(Bucket=stack.bucket, Key=keys[0])["Body"].read()
    return bytes(body)


def _wine_rows(n: int = 20) -> tuple[np.ndarray, list[str]]:
    from sklearn.datasets import load_wine

    data = load_wine()
    return np.asarray(data.data[:n], np.float32), [str(f) for f in data.feature_names]


def _infer(stack: Stack, x: np.ndarray) -> tuple[str, np.ndarray]:
    """(served version, first output) through Triton's own gRPC client."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(stack.grpc_url)
    try:
        meta = client.get_model_metadata(MODEL)
        tensor = triton.InferInput(meta.inputs[0].name, list(x.shape), meta.inputs[0].datatype)
        tensor.set_data_from_numpy(x)
        result = client.infer(MODEL, [tensor], client_timeout=30)
        return result.get_response().model_version, result.as_numpy(meta.outputs[0].name)
    finally:
        client.close()


def _run_onnx(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def _champion(stack: Stack, name: str = MODEL) -> str:
    return str(stack.mlflow_client().get_model_version_by_alias(name, "champion").version)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\n"
        f"stderr:\n{result.stderr[-3000:]}"
    )
    return result.stdout


# --------------------------------------------------------------------------------------------
# the services


def test_every_service_passes_its_compose_health_check_on_postgres(stack: Stack) -> None:
    """Each running service passes the health check the compose file gives it, MLflow and
    Prefect keep their state in Postgres (their tables are there, not in a SQLite file), and
    the bucket minio-init makes exists."""
    for service in ("postgres", "mlflow", "prefect-server"):
        result = stack.healthcheck(service)
        assert result.returncode == 0, f"{service}: {result.stdout} {result.stderr}"
    databases = stack.pg.query("postgres", "select string_agg(datname, ',') from pg_database")
    assert {"mlflow", "prefect"} <= set(databases.split(","))
    assert int(stack.pg.query("mlflow", "select count(*) from experiments")) >= 1
    assert stack.pg.query("prefect", "select count(*) from alembic_version") == "1"
    stack.s3_client().head_bucket(Bucket=stack.bucket)


# --------------------------------------------------------------------------------------------
# the loop


@pytest.fixture(scope="module")
def first_version(stack: Stack) -> str:
    """``neuroserve train fnn --data wine --epochs 1 --promote`` against the stack."""
    out = _ok(stack.cli("train", "fnn", "--data", "wine", "--epochs", "1", "--promote"))
    assert f"{MODEL} v1 -> @champion" in out, out
    return "1"


def test_train_records_run_metrics_onnx_in_bucket_and_alias(
    stack: Stack, first_version: str
) -> None:
    """The train command's run, per-epoch and test metrics are in MLflow on Postgres, the ONNX
    file is in the bucket (uploaded through the server's proxy, with no S3 credentials on the
    client), the version is READY and gated, @champion points at it, and the flow run is on the
    Prefect server."""
    import mlflow.artifacts

    client = stack.mlflow_client()
    mv = client.get_model_version(MODEL, first_version)
    assert mv.status == "READY" and mv.tags["neuroserve.state"] == "ready"
    assert mv.tags["neuroserve.gate"] == "champion"
    assert _champion(stack) == first_version
    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED"
    assert "test_accuracy" in run.data.metrics and "baseline_accuracy" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 1  # one epoch
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), (
        f"experiment {MODEL} stores artifacts at {experiment.artifact_location}, not through the "
        "server's proxy into the bucket"
    )
    assert "AWS_ACCESS_KEY_ID" not in stack.worker_env()
    onnx_bytes = _onnx_in_bucket(stack, MODEL, first_version)
    downloaded = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=client.get_model_version_download_uri(MODEL, first_version),
            dst_path=str(stack.tmp / "download-v1"),
            tracking_uri=stack.mlflow_url,
        )
    )
    assert (downloaded / "model.onnx").read_bytes() == onnx_bytes
    # The run's rows are in Postgres, and nothing went to a local artifact folder.
    assert stack.pg.query("mlflow", f"select status from runs where run_uuid = '{mv.run_id}'") == (
        "FINISHED"
    )
    local = stack.tmp / "volumes" / "training-data" / "neuroserve" / "mlartifacts"
    assert not local.exists() or not any(local.rglob("*.onnx"))
    flow_run = _latest_flow_run(stack, "train")
    assert flow_run["state_type"] == "COMPLETED"


@pytest.fixture(scope="module")
def server(stack: Stack, first_version: str) -> Iterator[Process]:
    """The serving image's command with the compose file's serving environment (MLflow URI, no
    S3 credentials, its cache volume), polling the registry every second instead of 30."""
    image = stack.compose.dockerfile("serving")
    env = stack.service_env("serving")
    env["NEUROSERVE_POLL_INTERVAL_S"] = "1"
    process = Process(
        "serving",
        stack.addresses("serving").argv(image.cmd),
        env,
        stack.logs,
        cwd=stack.tmp / "homes" / "serving",
    ).start()
    stack.processes.append(process)
    stack.wait_healthy("serving", process, 120)
    yield process
    process.stop()


def test_server_loads_champion_from_mlflow_and_hot_reloads_when_alias_moves(
    stack: Stack, server: Process
) -> None:
    """The server serves @champion's bytes from the bucket; a second train with --promote moves
    the alias and the running server switches to the new version's bytes without a restart."""
    x, _ = _wine_rows()
    version, out = _infer(stack, x)
    assert version == _champion(stack) == "1"
    np.testing.assert_allclose(out, _run_onnx(_onnx_in_bucket(stack, MODEL, "1"), x), rtol=1e-5)

    trained = _ok(stack.cli("train", "fnn", "--data", "wine", "--epochs", "1", "--seed", "7",
                            "--promote"))  # fmt: skip
    assert f"{MODEL} v2 -> @champion" in trained, trained
    waited = wait_until(lambda: _infer(stack, x)[0] == "2", "server on v2", 60, server)
    version, out = _infer(stack, x)
    v2 = _onnx_in_bucket(stack, MODEL, "2")
    np.testing.assert_allclose(out, _run_onnx(v2, x), rtol=1e-5)
    cached = stack.tmp / "volumes" / "serving-cache" / "neuroserve" / "cache" / MODEL / "2"
    assert (cached / "model.onnx").read_bytes() == v2, "the served file is not the bucket's"
    assert waited < 30, f"the alias move took {waited:.1f} s to be served"


def test_score_reads_from_and_writes_to_the_bucket_with_the_champion(
    stack: Stack, server: Process
) -> None:
    """``neuroserve score wine-fnn --input s3://... --output s3://...`` with the S3 variables
    the compose file gives the mlflow service (``MLFLOW_S3_ENDPOINT_URL`` and the MinIO keys, as
    ``docker compose run -e ... prefect-worker neuroserve score`` would pass them): it resolves
    @champion on the MLflow server, reads the CSV object, and puts one prediction per row, ids
    kept, back in the bucket, agreeing with the server's answer for the same rows."""
    import io

    import pandas as pd
    from sklearn.datasets import load_wine

    x, features = _wine_rows()
    frame = pd.DataFrame(x, columns=features)
    frame.insert(0, "id", [f"w{i}" for i in range(len(frame))])
    source, target = "scoring/wine.csv", "scoring/wine-scored.parquet"
    stack.s3_client().put_object(
        Bucket=stack.bucket, Key=source, Body=frame.to_csv(index=False).encode()
    )
    s3_env = {
        key: value
        for key, value in stack.addresses("mlflow").env(stack.compose.environment("mlflow")).items()
        if key.startswith("AWS_") or key == "MLFLOW_S3_ENDPOINT_URL"
    }
    assert set(s3_env) == {"MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    out = _ok(stack.cli("score", MODEL, "--input", f"s3://{stack.bucket}/{source}",
                        "--output", f"s3://{stack.bucket}/{target}", env=s3_env))  # fmt: skip
    champion = _champion(stack)
    assert f"{MODEL} v{champion}" in out and f"-> s3://{stack.bucket}/{target}" in out, out
    assert sorted(k for k in _bucket_keys(stack) if k.startswith("scoring/")) == sorted(
        [source, target]
    )
    body = stack.s3_client().get_object(Bucket=stack.bucket, Key=target)["Body"].read()
    scored = pd.read_parquet(io.BytesIO(body))
    assert scored["id"].tolist() == frame["id"].tolist()
    version, served = _infer(stack, x)
    assert version == champion
    labels = [str(n) for n in load_wine().target_names]
    assert scored["label"].tolist() == [labels[i] for i in served.argmax(axis=1)]
    np.testing.assert_allclose(
        scored[[f"prob_{label}" for label in labels]].to_numpy(), served, rtol=1e-5, atol=1e-6
    )


def test_worker_runs_the_retrain_deployment_from_prefect_yaml(
    stack: Stack, first_version: str
) -> None:
    """The worker's compose command (work pool, ``prefect deploy --all``, ``prefect worker
    start``) in the training image's work dir; the ``retrain-all`` deployment's run is picked up
    and finishes, and retraining registers a new gated version in MLflow."""
    client = stack.mlflow_client()
    before = {mv.version for mv in client.search_model_versions(f"name='{MODEL}'")}
    env = stack.worker_env()
    env["PREFECT_WORKER_QUERY_SECONDS"] = "1"  # Prefect's default polls every 10 s
    argv = stack.addresses("prefect-worker").argv(stack.compose.command("prefect-worker"))
    worker = Process("prefect-worker", argv, env, stack.logs, cwd=stack.app_dir).start()
    stack.processes.append(worker)
    try:
        pool = env["PREFECT_WORK_POOL"]

        def polling() -> bool:
            try:
                return bool(post_json(f"{stack.prefect_api}/work_pools/{pool}/workers/filter", {}))
            except OSError:
                return False

        wait_until(polling, "worker polling its pool", 180, worker, interval=1.0)
        deployment = post_json(
            stack.prefect_api + "/deployments/filter",
            {"deployments": {"name": {"any_": ["retrain-all"]}}},
        )[0]
        step = deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]
        assert step["directory"] == str(stack.app_dir), (
            f"the deployment's pull step goes to {step['directory']!r}, not the image's work dir"
        )
        run = subprocess.run(
            ["prefect", "deployment", "run", "retrain/retrain-all", "--watch",
             "--watch-timeout", str(CLI_TIMEOUT_S)],
            env=env, cwd=stack.tmp, capture_output=True, text=True,
            timeout=CLI_TIMEOUT_S + 30, check=False,
        )  # fmt: skip
        flow_run = _latest_flow_run(stack, "retrain")
        assert flow_run["deployment_id"] == deployment["id"]
        assert flow_run["state_type"] == "COMPLETED", (
            f"{flow_run['state_type']}: {run.stdout[-2000:]} {run.stderr[-2000:]}\n"
            f"{worker.log_tail()}"
        )
    finally:
        worker.stop()
    new = {mv.version for mv in client.search_model_versions(f"name='{MODEL}'")} - before
    assert len(new) == 1, f"retraining registered {sorted(new)}"
    mv = client.get_model_version(MODEL, new.pop())
    assert mv.status == "READY" and mv.tags["neuroserve.state"] == "ready"
    assert mv.tags["neuroserve.gate"] in ("champion", "challenger")


# --------------------------------------------------------------------------------------------
# faults


def test_postgres_restart_mid_train_finishes_and_registers_once(stack: Stack) -> None:
    """Postgres restarts while a train logs its epochs to MLflow (and its tasks to Prefect):
    the command finishes, every epoch's metric is recorded, and one READY version carries the
    alias; nothing is left half-registered."""
    name, epochs = "wine-pg-restart", 300
    client = stack.mlflow_client()
    started_before = stack.pg.query("postgres", "select pg_postmaster_start_time()")
    proc = subprocess.Popen(
        ["neuroserve", "train", "fnn", "--data", "wine", "--epochs", str(epochs),
         "--patience", str(epochs), "--name", name, "--promote"],
        env=stack.worker_env(), cwd=stack.app_dir, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def training() -> bool:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                return False
            runs = client.search_runs([experiment.experiment_id])
            return bool(runs) and "train_loss" in runs[0].data.metrics

        wait_until(training, "epoch logged by the train", CLI_TIMEOUT_S, interval=0.2)
        stack.pg.restart()
        assert proc.poll() is None, "the train finished before Postgres restarted; raise epochs"
        assert stack.pg.query("postgres", "select pg_postmaster_start_time()") != started_before
        stdout, stderr = proc.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}"
    versions = client.search_model_versions(f"name='{name}'")
    assert len(versions) == 1, [v.version for v in versions]
    mv = versions[0]
    assert mv.status == "READY" and mv.tags["neuroserve.state"] == "ready"
    assert _champion(stack, name) == str(mv.version)
    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(mv.run_id, "train_loss")) == epochs
    assert _latest_flow_run(stack, "train")["state_type"] == "COMPLETED"


def test_mlflow_down_while_serving_keeps_serving_the_cached_champion(
    stack: Stack, server: Process
) -> None:
    """With the MLflow server stopped, the server's registry polls fail and it keeps answering
    with the champion it has (health stays SERVING, so compose would not restart it); when
    MLflow is back, the polls reach it again."""
    x, _ = _wine_rows()
    version, expected = _infer(stack, x)
    stack.mlflow.stop()
    assert not http_ok(stack.mlflow_url + "/health")
    try:
        wait_until(lambda: "registry_unreachable" in server.log_text(), "failed poll logged", 60,
                   server)  # fmt: skip
        deadline = time.monotonic() + 5  # several poll intervals with the registry gone
        while time.monotonic() < deadline:
            now_version, out = _infer(stack, x)
            assert now_version == version
            np.testing.assert_array_equal(out, expected)
            time.sleep(0.5)
        assert stack.healthcheck("serving").returncode == 0
    finally:
        stack.start_mlflow()
    wait_until(lambda: "registry_reachable" in server.log_text(), "poll after MLflow is back",
               60, server)  # fmt: skip
    assert _infer(stack, x)[0] == version


def test_bucket_unreachable_during_train_fails_clearly_and_moves_no_alias(
    stack: Stack, first_version: str
) -> None:
    """With the S3 API gone, a train with --promote fails with one error line naming the
    artifact store, its run is marked FAILED, no version is registered and @champion stays.

    Runs last: the S3 stand-in keeps objects in memory, so the bucket does not come back. The
    retry settings are turned down so the failure comes in seconds; the defaults reach the
    same failure minutes later."""
    client = stack.mlflow_client()
    champion = _champion(stack)
    versions = {mv.version for mv in client.search_model_versions(f"name='{MODEL}'")}
    stack.s3.process.stop()
    result = stack.cli(
        "train", "fnn", "--data", "wine", "--epochs", "1", "--promote",
        env={"NEUROSERVE_RETRIES": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
             "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"},
    )  # fmt: skip
    assert result.returncode != 0, result.stdout[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:"), result.stderr[-3000:]
    assert "artifact store" in lines[-1] and stack.mlflow_url in lines[-1], lines[-1]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert _champion(stack) == champion
    assert {mv.version for mv in client.search_model_versions(f"name='{MODEL}'")} == versions
    experiment = client.get_experiment_by_name(MODEL)
    latest = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])[0]
    assert latest.info.status == "FAILED"
