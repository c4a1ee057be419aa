"""What can be checked of the deployment files without a Docker engine.

No engine runs on CI, so these tests hold docker-compose.yml and the Dockerfiles to the code: the
YAML parses, every variable our services set is one the code reads, ports agree with the defaults,
and the serving image stays free of torch.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"

#: Variables our services set that third-party libraries read, with the library that reads them.
THIRD_PARTY_VARS = {
    "MLFLOW_TRACKING_URI": "mlflow",
    "PREFECT_API_URL": "prefect",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_has_every_service_with_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {
        "postgres",
        "minio",
        "minio-init",
        "mlflow",
        "prefect-server",
        "prefect-worker",
        "serving",
    }
    assert expected <= set(services)
    for name in ("postgres", "minio", "mlflow", "prefect-server", "serving"):
        assert "healthcheck" in services[name], f"{name} has no health check"
    # Every named volume a service mounts is declared.
    declared = set(compose["volumes"])
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image!r}"


def test_depends_on_uses_conditions(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        deps = service.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must name conditions"
        for dep, spec in deps.items():
            assert dep in compose["services"], f"{name} depends on unknown service {dep}"
            assert "condition" in spec


def _code_reads(var: str) -> bool:
    """True when some module of ours, or prefect.yaml, names the variable literally (outside
    tests)."""
    pattern = re.compile(re.escape(var))
    if pattern.search((ROOT / "prefect.yaml").read_text(encoding="utf-8")):
        return True
    for package in ("serving", "pipelines", "training"):
        for path in (ROOT / package).rglob("*.py"):
            if pattern.search(path.read_text(encoding="utf-8")):
                return True
    return False


@pytest.mark.parametrize("service", ["serving", "prefect-worker"])
def test_every_variable_our_services_set_is_read(compose: dict[str, Any], service: str) -> None:
    fields = {f"NEUROSERVE_{name.upper()}" for name in Settings.model_fields}
    command = str(compose["services"][service].get("command", ""))
    for var in _env(compose["services"][service]):
        if var in THIRD_PARTY_VARS:
            assert importlib.util.find_spec(THIRD_PARTY_VARS[var]) is not None
            assert _code_reads(var) or var == "PREFECT_API_URL", f"{var} is never read"
        elif var.startswith("NEUROSERVE_"):
            assert var in fields or _code_reads(var), f"{service} sets {var}; nothing reads it"
        else:
            assert f"${{{var}}}" in command or f"$${var}" in command, (
                f"{service} sets {var}, which neither the code nor its command uses"
            )


def test_ports_agree_with_the_server_defaults(compose: dict[str, Any]) -> None:
    defaults = Settings()
    serving = compose["services"]["serving"]
    env = _env(serving)
    assert int(env["NEUROSERVE_HTTP_PORT"]) == defaults.http_port == 8000
    assert int(env["NEUROSERVE_GRPC_PORT"]) == defaults.grpc_port == 8001
    assert int(env["NEUROSERVE_METRICS_PORT"]) == defaults.metrics_port == 8002
    for port in (defaults.http_port, defaults.grpc_port, defaults.metrics_port):
        assert f"{port}:{port}" in serving["ports"]
    dockerfile = (ROOT / "docker/serving.Dockerfile").read_text()
    assert f"EXPOSE {defaults.http_port} {defaults.grpc_port} {defaults.metrics_port}" in dockerfile
    # The container must listen beyond loopback, or the published port reaches nothing.
    assert env["NEUROSERVE_HOST"] == "0.0.0.0"
    prometheus = yaml.safe_load((ROOT / "docker/prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"serving:{defaults.metrics_port}"]


def test_serving_health_check_module_exists(compose: dict[str, Any]) -> None:
    test = compose["services"]["serving"]["healthcheck"]["test"]
    module = test[test.index("-m") + 1]
    assert importlib.util.find_spec(module) is not None, f"health check runs missing {module}"


def test_serving_image_installs_serve_extra_without_torch() -> None:
    dockerfile = (ROOT / "docker/serving.Dockerfile").read_text()
    assert '".[serve]"' in dockerfile
    assert "torch" not in dockerfile.replace("no torch", "")
    assert "COPY training" not in dockerfile and "COPY pipelines" not in dockerfile
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for requirement in extras["serve"]:
        name = re.split(r"[<>=;\[ ]", requirement, maxsplit=1)[0].lower()
        assert name not in {"torch", "prefect", "mlflow", "neuroserve"}, requirement


def test_serving_imports_without_torch_prefect_or_training() -> None:
    """Import every serving module with torch, prefect and training made unimportable."""
    script = """
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'prefect', 'training', 'pipelines'}:
            raise ImportError('serving must not import ' + name)
sys.meta_path.insert(0, Block())
import serving
for info in pkgutil.walk_packages(serving.__path__, 'serving.'):
    if info.name.endswith('__main__'):
        continue
    importlib.import_module(info.name)
print('ok')
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
