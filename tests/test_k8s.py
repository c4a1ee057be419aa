"""The Kubernetes manifests (deploy/k8s/) held to the Kubernetes schemas and to the code, offline.

No cluster runs on CI, so, as tests/test_deploy.py does for docker-compose.yml, these tests check
what can be checked without one:

* every object validates against the Kubernetes schemas of the oldest and newest supported
  versions (kubernetes-validate, strict: unknown fields fail), and the KServe objects against
  the OpenAPI schemas of KServe's released CRDs (tests/k8s_crds/), closed the same way;
* every value that mirrors the code agrees with its one source: ports and variable names with
  ``serving.settings.Settings``, probe service names with ``serving.server``, the termination
  grace with the server's own grace period, images with docker-compose.yml and docker/, pools
  and job variables with prefect.yaml and prefect-kubernetes' worker;
* the server started with a pod's environment, mounts and Secret files, as the pod's user, with
  only the pod's volumes writable, answers the probes the pod declares, enforces both tokens
  from the Secret, and exits on SIGTERM within the pod's termination grace;
* the Prefect base job templates rendered into Jobs by prefect-kubernetes' own code.

The kustomizations are rendered by ``render`` below, which implements the few kustomize features
they use (resources, RFC 6902 patches, configMapGenerator files, namespace) and refuses any other;
``test_render_agrees_with_kustomize`` compares it with the real kustomize where a ``kustomize`` or
``kubectl`` binary is on PATH. The checks are functions returning problems, so the tests at the
end can break a loaded copy (a misspelt variable, a wrong port) and show that a check catches it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gzip
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import jsonpatch
import jsonschema
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving._proto import grpc_service_pb2 as pb
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from serving.server import SERVICE_NAME
from serving.settings import Settings
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
CRDS = Path(__file__).resolve().parent / "k8s_crds"

#: The kustomizations a team applies (README "Kubernetes").
KUSTOMIZATIONS = ("serving", "overlays/gpu", "kserve", "prefect")
#: Objects kept outside every kustomization, so an apply never overwrites real ones.
SECRETS_FILE = K8S / "secrets.example.yaml"

#: The oldest Kubernetes the manifests support: the preStop ``sleep`` action is on by default
#: from 1.30 (native gRPC probes need 1.27, autoscaling/v2 1.23).
MIN_K8S = "1.30.0"
K8S_VERSIONS = (MIN_K8S, kubernetes_validate.latest_version())

#: Seconds the server needs after its grace period (release sessions, flush spans, exit), which
#: terminationGracePeriodSeconds must leave on top of the preStop sleep and the grace period.
SHUTDOWN_SLACK_S = 5

#: Prefect's worker demands these two keys inside the pod spec of every job manifest (they belong
#: to the Job spec; prefect-kubernetes' _get_base_job_manifest puts them there, and the API server
#: drops them with a warning). The schema check removes exactly these, and only these.
PREFECT_POD_SPEC_EXTRAS = {"parallelism": 1, "completions": 1}

#: Changes the GPU job template may make to the CPU one (RFC 6902 paths).
GPU_TEMPLATE_PATHS = {
    "/variables/properties/gpu_count",
    "/job_configuration/job_manifest/spec/template/spec/containers/0/resources/limits/nvidia.com~1gpu",
    "/job_configuration/job_manifest/spec/template/spec/tolerations",
}
#: Changes the GPU serving overlay may make to the base (on the Deployment and the HPA).
GPU_OVERLAY_PATHS = {
    "/spec/template/spec/containers/0/resources/limits/nvidia.com~1gpu",
    "/spec/template/spec/containers/0/env/{end}",
    "/spec/template/spec/tolerations",
    "/spec/maxReplicas",
}


# ---------------------------------------------------------------------------------- rendering


class RenderError(ValueError):
    """A kustomization uses something ``render`` does not implement, or a patch does not apply."""


#: The kustomization keys ``render`` implements, and the generator options it honours.
RENDER_KEYS = {"apiVersion", "kind", "namespace", "resources", "patches", "configMapGenerator"}
GENERATOR_KEYS = {"name", "files", "options"}
GENERATOR_OPTIONS = {"disableNameSuffixHash", "labels"}
#: Kinds the namespace transformer leaves alone; none is used today, so meeting one is an error.
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "ClusterServingRuntime",
    "PriorityClass",
    "StorageClass",
}


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    actual = {"group": group, "version": version, "kind": obj["kind"]}
    actual["name"] = obj["metadata"]["name"]
    return all(actual.get(key) == value for key, value in target.items())


def render(directory: Path) -> list[dict[str, Any]]:
    """Build a kustomization as ``kustomize build`` would, for the features listed above."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(spec) - RENDER_KEYS
    if unknown:
        raise RenderError(
            f"{directory}: kustomization keys {sorted(unknown)} are not implemented by "
            f"tests/test_k8s.py's render(); it knows {sorted(RENDER_KEYS)}"
        )
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        objects += render(path) if path.is_dir() else _load_all(path)
    for generator in spec.get("configMapGenerator", []):
        if set(generator) - GENERATOR_KEYS or set(generator.get("options", {})) - GENERATOR_OPTIONS:
            raise RenderError(
                f"{directory}: configMapGenerator {generator['name']} uses more "
                f"than {sorted(GENERATOR_KEYS)} / options {sorted(GENERATOR_OPTIONS)}"
            )
        options = generator.get("options", {})
        if options.get("disableNameSuffixHash") is not True:
            raise RenderError(
                f"{directory}: render() does not compute kustomize's name hash; "
                "set options.disableNameSuffixHash: true"
            )
        metadata: dict[str, Any] = {"name": generator["name"]}
        if options.get("labels"):
            metadata["labels"] = dict(options["labels"])
        data = {}
        for name in generator["files"]:
            if "=" in name:
                raise RenderError(f"{directory}: key=path file entries are not implemented")
            data[Path(name).name] = (directory / name).read_text(encoding="utf-8")
        objects.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
        )
    for patch in spec.get("patches", []):
        ops = yaml.safe_load(
            (directory / patch["path"]).read_text(encoding="utf-8")
            if "path" in patch
            else patch["patch"]
        )
        if not isinstance(ops, list) or "target" not in patch:
            raise RenderError(f"{directory}: only RFC 6902 patches with a target are implemented")
        targets = [obj for obj in objects if _matches(obj, patch["target"])]
        if not targets:
            raise RenderError(f"{directory}: patch target {patch['target']} matches nothing")
        for obj in targets:
            try:
                patched = jsonpatch.apply_patch(obj, ops)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise RenderError(f"{directory}: patch {patch.get('path')} failed: {exc}") from exc
            obj.clear()
            obj.update(patched)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] in CLUSTER_SCOPED:
                raise RenderError(
                    f"render() does not model kustomize's namespace rules for {obj['kind']}"
                )
            obj["metadata"]["namespace"] = spec["namespace"]
    return objects


@functools.cache
def _rendered(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(K8S / name))


def rendered(name: str) -> list[dict[str, Any]]:
    """A fresh copy of one kustomization's objects (tests may change it)."""
    return copy.deepcopy(list(_rendered(name)))


def secrets() -> dict[str, dict[str, str]]:
    """The example Secrets, name -> data (stringData), as the cluster would hold them."""
    return {obj["metadata"]["name"]: obj["stringData"] for obj in _load_all(SECRETS_FILE)}


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_render_agrees_with_kustomize(name: str) -> None:
    """render() gives what the real kustomize gives (run where a binary is at hand)."""
    command = _kustomize_command()
    if command is None:
        pytest.skip("no kustomize or kubectl on PATH; render() is then the only renderer")
    out = subprocess.run(
        [*command, str(K8S / name)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    theirs = sorted(_load_all_text(out.stdout), key=_key)
    ours = sorted(rendered(name), key=_key)
    assert [_key(o) for o in ours] == [_key(o) for o in theirs]
    for mine, real in zip(ours, theirs, strict=True):
        assert mine == real, f"{_key(mine)} differs from kustomize's"


def _load_all_text(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def test_render_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(RenderError, match="commonLabels"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: []\npatches:\n  - patch: |\n      kind: Deployment\n"
    )
    with pytest.raises(RenderError, match="RFC 6902"):
        render(tmp_path)


# ---------------------------------------------------------------------------------- schemas


def _closed(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists properties, as strict does."""
    if isinstance(schema, dict):
        out = {key: _closed(value) for key, value in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


@functools.cache
def crd_validator(kind: str, api_version: str) -> jsonschema.Draft7Validator:
    """The validator for one KServe kind, from the vendored CRD of the version it names."""
    path = CRDS / f"serving.kserve.io_{kind.lower()}s.yaml.gz"
    assert path.exists(), f"no CRD for {kind} in {CRDS} (see its README.md)"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(gzip.decompress(path.read_bytes()), Loader=loader)
    group, _, version = api_version.partition("/")
    assert crd["spec"]["group"] == group, f"{kind}: group {group} is not the CRD's"
    versions = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    assert version in versions, f"{kind}: {version} is not served (served: {sorted(versions)})"
    return jsonschema.Draft7Validator(_closed(versions[version]["schema"]["openAPIV3Schema"]))


def schema_problems(obj: dict[str, Any], version: str) -> list[str]:
    """Why ``obj`` would not validate (empty: it does)."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if obj["apiVersion"].startswith("serving.kserve.io/"):
        validator = crd_validator(obj["kind"], obj["apiVersion"])
        return [
            f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(obj)
        ]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{where}: {exc.message}"]
    return []


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", [*KUSTOMIZATIONS, "secrets.example.yaml"])
def test_every_object_validates(name: str, version: str) -> None:
    objects = _load_all(SECRETS_FILE) if name.endswith(".yaml") else rendered(name)
    assert objects
    problems = [p for obj in objects for p in schema_problems(obj, version)]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------- the code

#: Variables the serving process reads: every Settings field (and its aliases), plus the names
#: serving/ reads itself (NEUROSERVE_HOME in home_dir()).
SETTINGS_ENV = {f"NEUROSERVE_{name.upper()}" for name in Settings.model_fields}
SETTINGS_ENV |= {
    alias
    for info in Settings.model_fields.values()
    if info.validation_alias is not None and hasattr(info.validation_alias, "choices")
    for alias in info.validation_alias.choices
    if isinstance(alias, str) and alias.isupper()
}
SERVING_ENV = SETTINGS_ENV | {
    match
    for path in (ROOT / "serving").rglob("*.py")
    for match in re.findall(r"[\"'](NEUROSERVE_[A-Z_]+)[\"']", path.read_text(encoding="utf-8"))
}


@functools.cache
def mlflow_env() -> frozenset[str]:
    """Every variable MLflow reads (``mlflow.environment_variables``)."""
    import mlflow.environment_variables as ev

    return frozenset(
        var.name for var in vars(ev).values() if type(var).__name__.endswith("EnvironmentVariable")
    )


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def _dockerfile(name: str) -> str:
    return (ROOT / "docker" / name).read_text(encoding="utf-8")


@dataclass
class ServingPod:
    """A serving container with what decides its behaviour, wherever the manifest keeps it."""

    where: str
    container: dict[str, Any]
    volumes: list[dict[str, Any]]
    pod_security: dict[str, Any]
    annotations: dict[str, str]
    #: terminationGracePeriodSeconds; None where the manifest leaves it to a controller
    grace_s: int | None
    configmaps: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)


def _merge_kserve_container(runtime: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """The predictor container as KServe builds it: the InferenceService's model fields over the
    runtime's container (env merged by name, envFrom appended)."""
    merged = copy.deepcopy(runtime)
    env = {e["name"]: e for e in merged.get("env", [])}
    env.update({e["name"]: e for e in model.get("env", [])})
    merged["env"] = list(env.values())
    if model.get("envFrom"):
        merged["envFrom"] = [*merged.get("envFrom", []), *model["envFrom"]]
    return merged


def serving_pods() -> list[ServingPod]:
    """Every way the manifests run the server: the Deployment (CPU and GPU) and each
    InferenceService on the ServingRuntime."""
    pods = []
    for name in ("serving", "overlays/gpu"):
        objects = rendered(name)
        deployment = one(objects, "Deployment", "neuroserve")
        spec = deployment["spec"]["template"]["spec"]
        pods.append(
            ServingPod(
                where=f"{name}: Deployment/neuroserve",
                container=spec["containers"][0],
                volumes=spec.get("volumes", []),
                pod_security=spec.get("securityContext", {}),
                annotations=deployment["spec"]["template"]["metadata"].get("annotations", {}),
                grace_s=spec.get("terminationGracePeriodSeconds"),
                configmaps={
                    o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"
                },
                secrets=secrets(),
            )
        )
    objects = rendered("kserve")
    runtime = one(objects, "ServingRuntime", "neuroserve")
    for isvc in (o for o in objects if o["kind"] == "InferenceService"):
        predictor = isvc["spec"]["predictor"]
        assert predictor["model"]["runtime"] == runtime["metadata"]["name"]
        pods.append(
            ServingPod(
                where=f"kserve: InferenceService/{isvc['metadata']['name']}",
                container=_merge_kserve_container(
                    runtime["spec"]["containers"][0], predictor["model"]
                ),
                volumes=runtime["spec"].get("volumes", []),
                pod_security={},
                annotations=runtime["spec"].get("annotations", {}),
                grace_s=predictor.get("terminationGracePeriodSeconds"),
                secrets=secrets(),
            )
        )
    return pods


def _cpu_cores(quantity: str) -> int:
    """A CPU quantity as the downward API gives it with divisor 1: whole cores, rounded up."""
    text = str(quantity)
    return math.ceil(int(text[:-1]) / 1000 if text.endswith("m") else float(text))


def env_sources(pod: ServingPod) -> tuple[dict[str, str], list[str]]:
    """The container's environment as Kubernetes would set it, and the problems resolving it."""
    env: dict[str, str] = {}
    problems = []
    for source in pod.container.get("envFrom", []):
        kind, store = (
            ("configMapRef", pod.configmaps)
            if "configMapRef" in source
            else ("secretRef", pod.secrets)
        )
        name = source[kind]["name"]
        if name not in store:
            problems.append(f"{pod.where}: envFrom {kind} {name} exists nowhere")
            continue
        env.update(store[name])
    for var in pod.container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "resourceFieldRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["resourceFieldRef"]
            if ref.get("containerName") != pod.container["name"]:
                problems.append(f"{pod.where}: {var['name']} reads another container's resources")
            kind, _, resource = ref["resource"].partition(".")
            quantity = pod.container.get("resources", {}).get(kind, {}).get(resource)
            if quantity is None:
                problems.append(f"{pod.where}: {var['name']} reads unset {ref['resource']}")
            else:
                env[var["name"]] = str(_cpu_cores(quantity))
        else:
            problems.append(
                f"{pod.where}: {var['name']}: only value and resourceFieldRef are "
                "modelled; extend env_sources"
            )
    return env, problems


def env_problems(pod: ServingPod) -> list[str]:
    """Every variable the pod sets is one the server (or MLflow under it) reads."""
    env, problems = env_sources(pod)
    for name in env:
        if name.startswith("NEUROSERVE_"):
            if name not in SERVING_ENV:
                problems.append(
                    f"{pod.where}: {name} is read by nothing in serving/ (not a Settings field)"
                )
        elif name not in SETTINGS_ENV and name not in mlflow_env():
            problems.append(
                f"{pod.where}: {name} is neither a serving setting nor an MLflow variable"
            )
    for var in ("NEUROSERVE_AUTH_TOKEN", "NEUROSERVE_ADMIN_TOKEN"):
        if var in env:
            problems.append(
                f"{pod.where}: {var} set in the manifest; tokens come from the "
                f"Secret through {var}_FILE"
            )
    return problems


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ holding exactly the serving variables of ``env`` (restored afterwards)."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("NEUROSERVE_", "MLFLOW_")):
            del os.environ[name]
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_of(pod: ServingPod) -> Settings:
    """The Settings the server builds from the pod's environment (token files left out: the
    live test reads them from the Secret)."""
    env, _ = env_sources(pod)
    env = {k: v for k, v in env.items() if not k.endswith("_TOKEN_FILE")}
    with environment(env):
        return Settings()


def _probes(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        kind: container[f"{kind}Probe"]
        for kind in ("startup", "liveness", "readiness")
        if f"{kind}Probe" in container
    }


def port_problems(pod: ServingPod) -> list[str]:
    """Ports the server binds (from Settings of the pod's env) are the ports the manifest
    declares, probes and scrapes; and they are the server's defaults, as everywhere else."""
    problems = []
    settings = settings_of(pod)
    defaults = Settings()
    where = pod.where
    for name in ("http_port", "grpc_port", "metrics_port"):
        if getattr(settings, name) != getattr(defaults, name):
            problems.append(
                f"{where}: {name} {getattr(settings, name)} is not the server's "
                f"default {getattr(defaults, name)} (compose and docs use it)"
            )
    if settings.host != "0.0.0.0":
        problems.append(
            f"{where}: the server binds {settings.host}; probes and Services reach only 0.0.0.0"
        )
    declared = {p["containerPort"]: p.get("name", "") for p in pod.container.get("ports", [])}
    if settings.grpc_port not in declared:
        problems.append(f"{where}: gRPC port {settings.grpc_port} is not a containerPort")
    elif not re.search("grpc|h2c", declared[settings.grpc_port]):
        problems.append(
            f"{where}: the gRPC containerPort is named "
            f"{declared[settings.grpc_port]!r}; KServe and meshes need grpc/h2c"
        )
    if settings.http_port not in declared:
        problems.append(f"{where}: REST port {settings.http_port} is not a containerPort")
    extra = set(declared) - {settings.http_port, settings.grpc_port, settings.metrics_port}
    if extra:
        problems.append(f"{where}: containerPorts {sorted(extra)} are nothing the server binds")
    probes = _probes(pod.container)
    if set(probes) != {"startup", "liveness", "readiness"}:
        problems.append(f"{where}: probes {sorted(probes)}; want startup, liveness, readiness")
    for kind, probe in probes.items():
        if "grpc" not in probe:
            problems.append(f"{where}: {kind} probe is not a native gRPC probe")
        elif probe["grpc"]["port"] != settings.grpc_port:
            problems.append(
                f"{where}: {kind} probe asks port {probe['grpc']['port']}, the "
                f"server's gRPC port is {settings.grpc_port}"
            )
    prefix = next(
        (p for p in ("prometheus.io", "prometheus.kserve.io") if f"{p}/port" in pod.annotations),
        None,
    )
    if prefix is None:
        problems.append(f"{where}: no Prometheus scrape annotations")
    else:
        if pod.annotations[f"{prefix}/port"] != str(settings.metrics_port):
            problems.append(
                f"{where}: scraped on {pod.annotations[f'{prefix}/port']}, metrics "
                f"are on {settings.metrics_port}"
            )
        if pod.annotations.get(f"{prefix}/path") != "/metrics":
            problems.append(f"{where}: scrape path is not /metrics")
    return problems


def probe_problems(pod: ServingPod) -> list[str]:
    """Readiness asks the inference service (SERVING once every model loaded), liveness and
    startup the whole server: the two names the server sets (serving/server.py)."""
    want = {"startup": "", "liveness": "", "readiness": SERVICE_NAME}
    return [
        f"{pod.where}: {kind} probe asks service {probe['grpc'].get('service', '')!r}, "
        f"want {want[kind]!r}"
        for kind, probe in _probes(pod.container).items()
        if "grpc" in probe and probe["grpc"].get("service", "") != want[kind]
    ]


def _prestop_sleep(container: dict[str, Any]) -> int:
    return int(container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0))


def grace_problems(pod: ServingPod) -> list[str]:
    """The kubelet's SIGKILL comes after the preStop sleep, the server's grace period and the
    slack it needs to finish, never before."""
    settings = settings_of(pod)
    need = _prestop_sleep(pod.container) + settings.grace_period_s + SHUTDOWN_SLACK_S
    if pod.grace_s is None:
        return [
            f"{pod.where}: no terminationGracePeriodSeconds (Kubernetes' 30 s default is not "
            "derived from the server's grace period)"
        ]
    if pod.grace_s < need:
        return [
            f"{pod.where}: terminationGracePeriodSeconds {pod.grace_s} < preStop sleep "
            f"{_prestop_sleep(pod.container)} + grace_period_s {settings.grace_period_s} + "
            f"slack {SHUTDOWN_SLACK_S}"
        ]
    return []


def _mount_of(pod: ServingPod, path: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The volumeMount (and its volume) holding ``path``, the longest mountPath first."""
    mounts = sorted(pod.container.get("volumeMounts", []), key=lambda m: -len(m["mountPath"]))
    for mount in mounts:
        if path == mount["mountPath"] or path.startswith(mount["mountPath"].rstrip("/") + "/"):
            volumes = [v for v in pod.volumes if v["name"] == mount["name"]]
            if len(volumes) != 1:
                return None
            return mount, volumes[0]
    return None


def secret_problems(pod: ServingPod) -> list[str]:
    """Both tokens are files from the tokens Secret, and every key they name exists there."""
    env, problems = env_sources(pod)
    for var in ("NEUROSERVE_AUTH_TOKEN_FILE", "NEUROSERVE_ADMIN_TOKEN_FILE"):
        if var not in env:
            problems.append(f"{pod.where}: {var} unset; both tokens must come from the Secret")
            continue
        held = _mount_of(pod, env[var])
        if held is None or "secret" not in held[1]:
            problems.append(f"{pod.where}: {var}={env[var]} is on no Secret volume")
            continue
        mount, volume = held
        relative = env[var][len(mount["mountPath"].rstrip("/")) + 1 :]
        secret_name = volume["secret"]["secretName"]
        items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
        key = items.get(relative, relative)
        if key not in pod.secrets.get(secret_name, {}):
            problems.append(
                f"{pod.where}: {var} reads key {key!r} of Secret {secret_name}, "
                f"which {SECRETS_FILE.name} does not hold"
            )
    for source in pod.container.get("envFrom", []):
        if "secretRef" in source:
            for key in pod.secrets.get(source["secretRef"]["name"], {}):
                if key not in mlflow_env():
                    problems.append(
                        f"{pod.where}: Secret key {key} becomes a variable MLflow does not read"
                    )
    return problems


def security_problems(pod: ServingPod) -> list[str]:
    """Non-root, no privilege escalation, no capabilities, read-only root file system, and every
    place the server writes (NEUROSERVE_HOME, its cache and captures, /tmp) on a writable
    volume."""
    problems = []
    sc = {**pod.pod_security, **pod.container.get("securityContext", {})}
    for key, want in (
        ("runAsNonRoot", True),
        ("allowPrivilegeEscalation", False),
        ("readOnlyRootFilesystem", True),
    ):
        if sc.get(key) is not want:
            problems.append(f"{pod.where}: securityContext.{key} is not {want}")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append(f"{pod.where}: capabilities are not all dropped")
    env, _ = env_sources(pod)
    settings = settings_of(pod)
    home = env.get("NEUROSERVE_HOME", "")
    writes = {"NEUROSERVE_HOME": home, "/tmp": "/tmp"}
    if settings.cache_dir is not None:
        writes["NEUROSERVE_CACHE_DIR"] = str(settings.cache_dir)
    if settings.capture_dir is not None and "://" not in settings.capture_dir:
        writes["NEUROSERVE_CAPTURE_DIR"] = settings.capture_dir
    for what, path in writes.items():
        held = _mount_of(pod, path) if path.startswith("/") else None
        writable = (
            held is not None
            and not held[0].get("readOnly")
            and bool({"emptyDir", "persistentVolumeClaim"} & set(held[1]))
        )
        if not writable:
            problems.append(f"{pod.where}: {what} ({path or 'unset'}) is not on a writable volume")
    return problems


CHECKS = (
    env_problems,
    port_problems,
    probe_problems,
    grace_problems,
    secret_problems,
    security_problems,
)


@pytest.mark.parametrize("pod", serving_pods(), ids=lambda p: p.where)
def test_serving_pod_agrees_with_the_code(pod: ServingPod) -> None:
    problems = [p for check in CHECKS for p in check(pod)]
    assert not problems, "\n".join(problems)


def test_the_checks_see_every_serving_pod() -> None:
    assert [p.where for p in serving_pods()] == [
        "serving: Deployment/neuroserve",
        "overlays/gpu: Deployment/neuroserve",
        "kserve: InferenceService/neuroserve",
        "kserve: InferenceService/neuroserve-repository",
    ]


def test_images_are_the_ones_compose_builds() -> None:
    compose = _compose()["services"]
    serving_image = compose["serving"]["image"]
    assert compose["serving"]["build"]["dockerfile"] == "docker/serving.Dockerfile"
    # The GPU overlay keeps the base image: it is the CUDA one.
    assert re.search(r"^FROM nvidia/cuda:\S+cudnn", _dockerfile("serving.Dockerfile"), re.M)
    for name in ("serving", "overlays/gpu"):
        container = one(rendered(name), "Deployment", "neuroserve")["spec"]["template"]["spec"][
            "containers"
        ][0]
        assert container["image"] == serving_image, name
    runtime = one(rendered("kserve"), "ServingRuntime", "neuroserve")
    assert runtime["spec"]["containers"][0]["image"] == serving_image
    for template in ("base-job-template.json", "base-job-template-gpu.json"):
        variables = json.loads((K8S / "prefect" / template).read_text())["variables"]
        assert variables["properties"]["image"]["default"] == compose["prefect-worker"]["image"]


def test_gpu_overlay_adds_only_the_gpu() -> None:
    base, gpu = rendered("serving"), rendered("overlays/gpu")
    assert [_key(o) for o in base] == [_key(o) for o in gpu]
    paths = {
        op["path"]
        for mine, theirs in zip(base, gpu, strict=True)
        for op in jsonpatch.make_patch(mine, theirs)
    }
    base_env = one(base, "Deployment", "neuroserve")["spec"]["template"]["spec"]["containers"][0]
    end = len(base_env["env"])
    assert paths == {path.format(end=end) for path in GPU_OVERLAY_PATHS}
    container = one(gpu, "Deployment", "neuroserve")["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # Strict device: a GPU pod that cannot run CUDA refuses rather than serve from the CPU.
    assert container["env"][end] == {"name": "NEUROSERVE_DEVICE", "value": "cuda"}
    assert settings_of(serving_pods()[1]).device == "cuda"


def test_services_hpa_and_pdb_point_at_the_serving_pods() -> None:
    objects = rendered("serving")
    deployment = one(objects, "Deployment", "neuroserve")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    settings = settings_of(serving_pods()[0])
    services = [o for o in objects if o["kind"] == "Service"]
    assert services
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in named, f"{port} targets no container port"
            assert port["port"] == named[port["targetPort"]]
    exposed = {p["port"] for p in one(objects, "Service", "neuroserve")["spec"]["ports"]}
    assert exposed == {settings.http_port, settings.grpc_port}
    hpa = one(objects, "HorizontalPodAutoscaler", "neuroserve")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "neuroserve",
    }
    metric_resources = {m["resource"]["name"] for m in hpa["spec"]["metrics"]}
    for resource in metric_resources:  # utilization is relative to the request
        assert resource in container["resources"]["requests"]
    pdb = one(objects, "PodDisruptionBudget", "neuroserve")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_kserve_runtime_is_a_v2_onnx_runtime() -> None:
    """The fields KServe's controller reads beyond the schema: the container KServe merges the
    model into is named kserve-container, the first port is REST (Service port 80), and the
    runtime declares the protocol and format its InferenceServices ask for."""
    objects = rendered("kserve")
    runtime = one(objects, "ServingRuntime", "neuroserve")
    spec = runtime["spec"]
    assert spec["containers"][0]["name"] == "kserve-container"
    assert {"v2", "grpc-v2"} <= set(spec["protocolVersions"])
    formats = {(f["name"], f.get("version")) for f in spec["supportedModelFormats"]}
    assert ("onnx", "1") in formats
    settings = settings_of(serving_pods()[2])
    assert spec["containers"][0]["ports"][0]["containerPort"] == settings.http_port
    for isvc in (o for o in objects if o["kind"] == "InferenceService"):
        model = isvc["spec"]["predictor"]["model"]
        assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
        assert model["protocolVersion"] in spec["protocolVersions"]
        # Knative allows one port per container; the runtime has two.
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
        if "storageUri" in model:
            env = {e["name"]: e["value"] for e in model.get("env", [])}
            assert env["NEUROSERVE_MODEL_REPOSITORY"] == "/mnt/models"  # where KServe puts it


# ---------------------------------------------------------------------------------- live server


@dataclass
class PodRun:
    """The pod's environment laid out on this machine: mounts as directories, Secret files."""

    root: Path
    env: dict[str, str]
    uid: int | None
    gid: int | None


def lay_out(pod: ServingPod, root: Path) -> PodRun:
    """Mounts become directories under ``root``, Secret volumes their files; paths in the env
    are rewritten to them. As root, the directories belong to the pod's runAsUser/fsGroup."""
    env, problems = env_sources(pod)
    assert not problems, problems
    sc = {**pod.pod_security, **pod.container.get("securityContext", {})}
    as_root = os.geteuid() == 0 and shutil.which("setpriv") is not None
    uid = sc.get("runAsUser") if as_root else None
    gid = sc.get("fsGroup", sc.get("runAsGroup")) if as_root else None
    for mount in pod.container.get("volumeMounts", []):
        local = root / mount["mountPath"].lstrip("/")
        local.mkdir(parents=True, exist_ok=True)
        volume = next(v for v in pod.volumes if v["name"] == mount["name"])
        if "secret" in volume:
            data = pod.secrets[volume["secret"]["secretName"]]
            for item in volume["secret"].get("items", [{"key": k, "path": k} for k in data]):
                (local / item["path"]).write_text(data[item["key"]])
                (local / item["path"]).chmod(volume["secret"].get("defaultMode", 0o644))
        if uid is not None:
            for path in [local, *local.rglob("*")]:
                os.chown(path, uid, gid if gid is not None else uid)
    for name, value in env.items():
        if value.startswith("/"):
            env[name] = str(root / value.lstrip("/"))
    return PodRun(root=root, env=env, uid=uid, gid=gid)


def _health(channel: grpc.Channel, service: str) -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _code(call: Any) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    "where", ["serving: Deployment/neuroserve", "kserve: InferenceService/neuroserve-repository"]
)
def test_server_runs_from_the_pod_spec(where: str) -> None:
    """Start ``python -m serving`` with the pod's environment, as the pod's user, with only the
    pod's volumes writable (HOME is / as for a user without a passwd entry); then do what the
    kubelet and the clients do: the declared probes, both tokens, the scrape, SIGTERM.

    Only what cannot run here is replaced: the MLflow server the Secret names becomes a SQLite
    registry holding a champion (the KServe storage variant keeps its /mnt/models directory),
    and the ports become free ones (their values are checked above).
    """
    from tests.serving import onnx_models

    pod = next(p for p in serving_pods() if p.where == where)
    root = Path(tempfile.mkdtemp(prefix="neuroserve-pod-"))
    root.chmod(0o755)
    try:
        run = lay_out(pod, root)
        settings = settings_of(pod)
        source: dict[str, str] = {}
        if settings.model_repository is not None:  # KServe's storage initializer filled it
            repo = Path(run.env["NEUROSERVE_MODEL_REPOSITORY"])
            onnx_models.save(onnx_models.classifier(), repo / "classifier" / "1" / "model.onnx")
            for path in [repo, *repo.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
        else:
            store = root / "mlflow-server"
            source["MLFLOW_TRACKING_URI"] = _registry(store, settings.mlflow_alias)
            if run.uid is not None:  # the store belongs to the MLflow service, not the pod
                for path in [store, *store.rglob("*")]:
                    os.chown(path, run.uid, run.gid if run.gid is not None else run.uid)
        ports = {name: free_port() for name in ("HTTP", "GRPC", "METRICS")}
        env = {
            "PATH": os.environ["PATH"],
            "HOME": "/",
            "PYTHONPATH": str(ROOT),
            **run.env,
            **source,
            "NEUROSERVE_HOST": "127.0.0.1",
            **{f"NEUROSERVE_{k}_PORT": str(v) for k, v in ports.items()},
        }
        if "tmp" in {m["name"] for m in pod.container["volumeMounts"]}:
            env["TMPDIR"] = str(root / "tmp")
        command = [sys.executable, "-m", "serving"]
        if run.uid is not None:
            # setpriv rather than Popen(user=...): the latter cannot exec the venv's interpreter
            # here (EACCES), while setpriv's setresuid does.
            command = [
                "setpriv",
                f"--reuid={run.uid}",
                f"--regid={run.gid}",
                "--clear-groups",
                *command,
            ]
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=root,  # owned by root: the working directory is not writable either
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            if run.uid is not None:
                _assert_runs_as(proc.pid, run.uid)
            _exercise(pod, proc, ports, settings)
        finally:
            if proc.poll() is None:
                proc.kill()
            output = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        if source:  # the champion was cached on the pod's data volume, where the pod can write
            cache = Path(run.env["NEUROSERVE_HOME"]) / "cache"
            assert list(cache.rglob("*.onnx")), output[-3000:]
    finally:
        shutil.rmtree(root, ignore_errors=True)


#: Builds a SQLite MLflow registry with model "classifier" v1 under an alias (argv: store dir,
#: alias, ONNX file), in a child process so MLflow's global state stays out of the tests.
_MAKE_REGISTRY = """
import sys
import mlflow, mlflow.onnx, onnx
from mlflow.tracking import MlflowClient
store, alias, model = sys.argv[1:]
uri = f"sqlite:///{store}/mlflow.db"
client = MlflowClient(uri, uri)
experiment = client.create_experiment("k8s", artifact_location=f"{store}/artifacts")
mlflow.set_tracking_uri(uri)
mlflow.set_registry_uri(uri)
with mlflow.start_run(experiment_id=experiment):
    mlflow.onnx.log_model(onnx.load(model), name="model", registered_model_name="classifier")
client.set_registered_model_alias("classifier", alias, "1")
print(uri)
"""


def _registry(store: Path, alias: str) -> str:
    """A SQLite registry whose ``alias`` holds the classifier; returns its tracking URI."""
    from tests.serving import onnx_models

    store.mkdir()
    model = store / "classifier.onnx"
    onnx_models.save(onnx_models.classifier(), model)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run(
        [sys.executable, "-c", _MAKE_REGISTRY, str(store), alias, str(model)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=store,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def _assert_runs_as(pid: int, uid: int) -> None:
    """The server process (setpriv execs it in place) runs as the pod's user, not root."""
    deadline = time.monotonic() + 10
    while True:
        # Forked (pytest's argv), then setpriv, then the server: wait for the last, and read
        # the status after the argv so that both describe the server.
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        if argv[-2:] == [b"-m", b"serving"] and not argv[0].endswith(b"setpriv"):
            status = Path(f"/proc/{pid}/status").read_text()
            uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M)
            assert uids and (int(uids.group(1)), int(uids.group(2))) == (uid, uid), status
            return
        assert time.monotonic() < deadline, "setpriv never started the server"
        time.sleep(0.05)


def _exercise(
    pod: ServingPod, proc: subprocess.Popen[str], ports: dict[str, int], settings: Settings
) -> None:
    probes = _probes(pod.container)
    secret = secrets()["neuroserve-tokens"]
    auth, admin = secret["auth-token"], secret["admin-token"]
    with grpc.insecure_channel(f"127.0.0.1:{ports['GRPC']}") as channel:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, "the server exited during start-up"
            try:
                if _health(channel, probes["readiness"]["grpc"].get("service", "")) == "SERVING":
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.2)
        for kind in ("startup", "liveness"):
            assert _health(channel, probes[kind]["grpc"].get("service", "")) == "SERVING", kind
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def bearer(token: str) -> list[tuple[str, str]]:
            return [("authorization", f"Bearer {token}")]

        ready = pb.ModelReadyRequest(name="classifier")
        index = pb.RepositoryIndexRequest()
        assert _code(lambda: stub.ModelReady(ready, timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: stub.ModelReady(ready, metadata=bearer(auth), timeout=5)) == (
            grpc.StatusCode.OK
        )
        assert _code(lambda: stub.RepositoryIndex(index, metadata=bearer(auth), timeout=5)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert _code(lambda: stub.RepositoryIndex(index, metadata=bearer(admin), timeout=5)) == (
            grpc.StatusCode.OK
        )
        prefix = next(
            p for p in ("prometheus.io", "prometheus.kserve.io") if f"{p}/path" in pod.annotations
        )
        url = f"http://127.0.0.1:{ports['METRICS']}{pod.annotations[f'{prefix}/path']}"
        with urllib.request.urlopen(url, timeout=5) as reply:
            assert reply.status == 200
            assert "neuroserve_models_loaded" in reply.read().decode()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=pod.grace_s)
    elapsed = time.monotonic() - started
    assert pod.grace_s is not None
    budget = pod.grace_s - _prestop_sleep(pod.container)
    assert elapsed < budget, f"exit took {elapsed:.1f} s; the kubelet kills after {budget} s"
    assert elapsed < settings.grace_period_s + SHUTDOWN_SLACK_S


# ---------------------------------------------------------------------------------- Prefect

PREFECT = K8S / "prefect"
TEMPLATES = {"neuroserve": "base-job-template.json", "neuroserve-gpu": "base-job-template-gpu.json"}
PLACEHOLDER = re.compile(r"\{\{\s*([\w.$]+)\s*\}\}")

#: Renders each template as prefect-kubernetes' worker does for a flow run
#: (from_template_and_values, then prepare_for_flow_run), for the defaults and for a deployment
#: that sets its own env. In a child process: it needs a Prefect API (an ephemeral one, under a
#: temporary PREFECT_HOME).
_RENDER_JOBS = """
import asyncio, json, sys, uuid
from prefect.client.schemas.objects import FlowRun
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration
out = []
async def main():
    for path, values in json.loads(sys.argv[1]):
        template = json.load(open(path))
        cfg = await KubernetesWorkerJobConfiguration.from_template_and_values(template, values)
        cfg.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="k8s-test"))
        out.append({"path": path, "values": values, "manifest": cfg.job_manifest,
                    "namespace": cfg.namespace})
asyncio.run(main())
print("RENDERED" + json.dumps(out))
"""


def job_templates() -> dict[str, dict[str, Any]]:
    return {pool: json.loads((PREFECT / name).read_text()) for pool, name in TEMPLATES.items()}


@functools.cache
def _prefect_renders() -> tuple[dict[str, Any], ...]:
    cases = []
    for name in TEMPLATES.values():
        for values in ({}, {"env": {"NEUROSERVE_RETRIES": "5"}}):
            cases.append([str(PREFECT / name), values])
    cases.append([str(PREFECT / TEMPLATES["neuroserve-gpu"]), {"gpu_count": 2}])
    with tempfile.TemporaryDirectory(prefix="neuroserve-prefect-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env["PREFECT_HOME"] = home
        # The ephemeral API's 20 s start-up default is short on a loaded 2-core machine.
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
        out = subprocess.run(
            [sys.executable, "-c", _RENDER_JOBS, json.dumps(cases)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=home,
            check=False,
        )
    assert out.returncode == 0, f"rendering the job templates failed:\n{out.stderr[-3000:]}"
    line = next(line for line in out.stdout.splitlines() if line.startswith("RENDERED"))
    return tuple(json.loads(line[len("RENDERED") :]))


def prefect_renders() -> list[dict[str, Any]]:
    return copy.deepcopy(list(_prefect_renders()))


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_job_templates_render_to_valid_jobs(version: str) -> None:
    renders = prefect_renders()
    assert len(renders) == 5
    for case in renders:
        manifest = case["manifest"]
        pod = manifest["spec"]["template"]["spec"]
        for key, value in PREFECT_POD_SPEC_EXTRAS.items():
            assert pod.pop(key) == value  # the worker demands them; the API server drops them
        problems = schema_problems(manifest, version)
        assert not problems, f"{case['path']} {case['values']}:\n" + "\n".join(problems)


def test_job_templates_keep_their_env_and_gpu_under_deployment_values() -> None:
    cpu = job_templates()["neuroserve"]
    defaults = cpu["variables"]["properties"]["env"]["default"]
    for case in prefect_renders():
        container = case["manifest"]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        # A deployment's own env adds to the pool's; it never drops NEUROSERVE_CODE_DIR.
        assert defaults.items() <= env.items(), case["values"]
        for name, value in case["values"].get("env", {}).items():
            assert env[name] == value
        assert (
            case["namespace"]
            == one(rendered("prefect"), "Deployment", "prefect-worker")["metadata"]["namespace"]
        )
        if case["path"].endswith(TEMPLATES["neuroserve-gpu"]):
            limits = container["resources"]["limits"]
            assert limits["nvidia.com/gpu"] == case["values"].get("gpu_count", 1)
        else:
            assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


def test_job_templates_keep_every_worker_field_and_variable() -> None:
    """Every field and variable of prefect-kubernetes' default template is still there (so the
    worker's options and deployments' job_variables keep working), every placeholder names a
    variable, and every variable is used (Prefect ignores an unused one)."""
    from prefect_kubernetes.worker import KubernetesWorker

    default = KubernetesWorker.get_default_base_job_template()
    for pool, template in job_templates().items():
        assert set(template["job_configuration"]) == set(default["job_configuration"]), pool
        variables = set(template["variables"]["properties"])
        assert set(default["variables"]["properties"]) <= variables, pool
        used = set(PLACEHOLDER.findall(json.dumps(template["job_configuration"])))
        assert used == variables, (
            f"{pool}: unused {variables - used}, undeclared {used - variables}"
        )


def test_gpu_job_template_adds_only_the_gpu() -> None:
    templates = job_templates()
    paths = {
        op["path"]
        for op in jsonpatch.make_patch(templates["neuroserve"], templates["neuroserve-gpu"])
    }
    assert paths == GPU_TEMPLATE_PATHS


def test_job_templates_agree_with_the_training_image_and_prefect_yaml() -> None:
    dockerfile = _dockerfile("training.Dockerfile")
    workdir = re.search(r"^WORKDIR (\S+)$", dockerfile, re.M)
    home = re.search(r"^ENV NEUROSERVE_HOME=(\S+)$", dockerfile, re.M)
    assert workdir and home
    prefect_yaml = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    pulled = set(re.findall(r"\{\{\s*\$(\w+)\s*\}\}", json.dumps(prefect_yaml["pull"])))
    objects = rendered("prefect")
    for pool, template in job_templates().items():
        variables = template["variables"]["properties"]
        env = variables["env"]["default"]
        assert env["NEUROSERVE_CODE_DIR"] == workdir.group(1), "prefect.yaml's pull step cds here"
        assert env["NEUROSERVE_HOME"] == home.group(1)
        assert pulled <= set(env), f"{pool}: prefect.yaml's pull step needs {pulled - set(env)}"
        for deployment in prefect_yaml["deployments"]:
            assert set(deployment["work_pool"].get("job_variables") or {}) <= set(variables)
        manifest = template["job_configuration"]["job_manifest"]
        pod = manifest["spec"]["template"]["spec"]
        container = pod["containers"][0]
        training = ServingPod(
            where=f"job template {pool}",
            container={**container, "env": [{"name": k, "value": v} for k, v in env.items()]},
            volumes=pod["volumes"],
            pod_security=pod["securityContext"],
            annotations={},
            grace_s=None,
            secrets=secrets(),
        )
        for path in (env["NEUROSERVE_HOME"], env["HOME"]):
            held = _mount_of(training, path)
            assert held is not None and "emptyDir" in held[1], f"{pool}: {path} is not writable"
        assert _mount_of(training, "/dev/shm") is not None, "torch DataLoader workers need shm"
        assert [s["secretRef"]["name"] for s in container["envFrom"]] == ["neuroserve-mlflow"]
        assert not [p for p in secret_problems(training) if "Secret key" in p]
        one(objects, "ServiceAccount", variables["service_account_name"]["default"])
        assert (
            variables["namespace"]["default"]
            == one(objects, "ServiceAccount", "prefect-worker")["metadata"]["namespace"]
        )


def _worker_args(deployment: dict[str, Any]) -> dict[str, str]:
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["prefect", "worker", "start"]
    return {
        args[i]: args[i + 1]
        for i in range(3, len(args) - 1)
        if args[i].startswith("--") and not args[i + 1].startswith("--")
    }


def test_workers_poll_the_pools_prefect_yaml_names() -> None:
    """Each worker polls a pool prefect.yaml names (or its GPU twin) with the mounted template
    for that pool, runs the Prefect version compose runs, sets only Prefect settings, and is
    health-probed on the port Prefect's worker webserver binds."""
    from prefect.settings import Settings as PrefectSettings

    # Private, but the only list of every PREFECT_* name; prefect is pinned below 3.9.
    from prefect.settings.legacy import _get_valid_setting_names
    from prefect.settings.models.worker import WorkerWebserverSettings

    objects = rendered("prefect")
    prefect_yaml = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    pools = {d["work_pool"]["name"] for d in prefect_yaml["deployments"]}
    compose = _compose()["services"]
    server_version = compose["prefect-server"]["image"].split(":")[1].split("-")[0]
    assert prefect_yaml["prefect-version"] == server_version
    templates_cm = one(objects, "ConfigMap", "neuroserve-prefect-job-templates")
    workers = {}
    for name in ("prefect-worker", "prefect-worker-gpu"):
        deployment = one(objects, "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        args = _worker_args(deployment)
        assert args["--type"] == "kubernetes"
        assert "--with-healthcheck" in container["args"]
        workers[args["--pool"]] = deployment
        assert container["image"] == f"prefecthq/prefect:{server_version}-python3.11-kubernetes"
        mount = next(
            m
            for m in container["volumeMounts"]
            if args["--base-job-template"].startswith(m["mountPath"])
        )
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] == templates_cm["metadata"]["name"]
        filename = args["--base-job-template"][len(mount["mountPath"]) + 1 :]
        assert filename == TEMPLATES[args["--pool"]]
        assert json.loads(templates_cm["data"][filename]) == job_templates()[args["--pool"]]
        port = next(p for p in container["ports"] if p["name"] == "health")["containerPort"]
        assert port == WorkerWebserverSettings().port
        assert container["livenessProbe"]["httpGet"]["port"] == "health"
        env_names = {e["name"] for e in container["env"]}
        env_names |= set(one(objects, "ConfigMap", "neuroserve-prefect")["data"])
        known = _get_valid_setting_names(PrefectSettings) | {"HOME"}
        assert env_names <= known, f"{name}: {env_names - known} are not Prefect settings"
    assert set(workers) == set(TEMPLATES) and pools <= set(workers)
    # The two workers differ in their names, pool and template only.
    cpu, gpu = workers["neuroserve"], workers["neuroserve-gpu"]
    paths = {op["path"] for op in jsonpatch.make_patch(cpu, gpu)}
    assert paths == {
        "/metadata/name",
        "/metadata/labels/app.kubernetes.io~1component",
        "/spec/selector/matchLabels/app.kubernetes.io~1component",
        "/spec/template/metadata/labels/app.kubernetes.io~1component",
        "/spec/template/spec/containers/0/args/4",
        "/spec/template/spec/containers/0/args/8",
    }
    binding = one(objects, "RoleBinding", "prefect-worker")
    namespace = cpu["metadata"]["namespace"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "prefect-worker", "namespace": namespace}
    ]
    rules = one(objects, "Role", "prefect-worker")["rules"]
    assert any("jobs" in r["resources"] and "create" in r["verbs"] for r in rules)


# ------------------------------------------------------------------------------ the checks catch


def _serving_pod() -> ServingPod:
    return serving_pods()[0]


def _env_entry(pod: ServingPod, name: str) -> dict[str, Any]:
    return next(e for e in pod.container["env"] if e["name"] == name)


def test_a_misspelt_variable_fails() -> None:
    pod = _serving_pod()
    _env_entry(pod, "NEUROSERVE_GRPC_PORT")["name"] = "NEUROSERVE_GRPC_PROT"
    assert any("NEUROSERVE_GRPC_PROT is read by nothing" in p for p in env_problems(pod))
    pod = _serving_pod()
    pod.configmaps["neuroserve-serving"]["NEUROSERVE_MLFLOW_ALIASS"] = "champion"
    assert any("NEUROSERVE_MLFLOW_ALIASS" in p for p in env_problems(pod))
    pod = _serving_pod()
    pod.secrets = copy.deepcopy(pod.secrets)
    pod.secrets["neuroserve-mlflow"]["MLFLOW_TRACKING_URL"] = "http://mlflow:5000"
    assert any("MLFLOW_TRACKING_URL" in p for p in env_problems(pod))
    pod = _serving_pod()
    _env_entry(pod, "NEUROSERVE_ADMIN_TOKEN_FILE")["name"] = "NEUROSERVE_ADMIN_TOKEN"
    assert any("tokens come from the Secret" in p for p in env_problems(pod))


def test_a_wrong_port_fails() -> None:
    pod = _serving_pod()
    pod.container["readinessProbe"]["grpc"]["port"] = 8002
    assert any("readiness probe asks port 8002" in p for p in port_problems(pod))
    pod = _serving_pod()
    _env_entry(pod, "NEUROSERVE_GRPC_PORT")["value"] = "9001"
    problems = port_problems(pod)
    assert any("grpc_port 9001 is not the server's default" in p for p in problems)
    assert any("gRPC port 9001 is not a containerPort" in p for p in problems)
    pod = _serving_pod()
    pod.annotations = {**pod.annotations, "prometheus.io/port": "8001"}
    assert any("scraped on 8001" in p for p in port_problems(pod))
    pod = _serving_pod()
    next(p for p in pod.container["ports"] if p["name"] == "grpc")["name"] = "web"
    assert any("named 'web'" in p for p in port_problems(pod))


def test_a_wrong_probe_service_or_grace_fails() -> None:
    pod = _serving_pod()
    pod.container["readinessProbe"]["grpc"]["service"] = "inference.GRPCInferenceServce"
    assert probe_problems(pod)
    pod = replace(_serving_pod(), grace_s=10)
    assert any("terminationGracePeriodSeconds 10 <" in p for p in grace_problems(pod))
    pod = _serving_pod()
    _env_entry(pod, "NEUROSERVE_GRACE_PERIOD_S")["value"] = "30"
    assert grace_problems(pod)


def test_a_token_or_write_path_off_its_volume_fails() -> None:
    pod = _serving_pod()
    _env_entry(pod, "NEUROSERVE_AUTH_TOKEN_FILE")["value"] = "/etc/neuroserve/auth-token"
    assert any("is on no Secret volume" in p for p in secret_problems(pod))
    pod = _serving_pod()
    next(v for v in pod.volumes if v["name"] == "tokens")["secret"]["items"][1]["key"] = "admin"
    assert any("key 'admin'" in p for p in secret_problems(pod))
    pod = _serving_pod()
    _env_entry(pod, "NEUROSERVE_HOME")["value"] = "/var/lib/neuroserve"
    assert any("NEUROSERVE_HOME (/var/lib/neuroserve)" in p for p in security_problems(pod))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.__setitem__("imagePullPolicyy", "Always"), "imagePullPolicyy"),
        (lambda c: c["ports"][0].__setitem__("containerPort", "8000"), "'8000' is not of type"),
        (lambda c: c["readinessProbe"]["grpc"].pop("port"), "'port' is a required property"),
    ],
)
def test_the_schema_catches_a_broken_deployment(mutate: Any, message: str) -> None:
    deployment = one(rendered("serving"), "Deployment", "neuroserve")
    mutate(deployment["spec"]["template"]["spec"]["containers"][0])
    assert any(message in p for p in schema_problems(deployment, MIN_K8S))


def test_the_crd_schema_catches_a_broken_runtime() -> None:
    runtime = one(rendered("kserve"), "ServingRuntime", "neuroserve")
    runtime["spec"]["supportedModelFormat"] = runtime["spec"].pop("supportedModelFormats")
    assert any("supportedModelFormat" in p for p in schema_problems(runtime, MIN_K8S))
    isvc = one(rendered("kserve"), "InferenceService", "neuroserve")
    isvc["spec"]["predictor"]["model"]["modelFormat"]["nmae"] = "onnx"
    assert any("nmae" in p for p in schema_problems(isvc, MIN_K8S))
    isvc = one(rendered("kserve"), "InferenceService", "neuroserve")
    isvc["spec"]["predictor"]["minReplicas"] = "two"
    assert any("'two' is not of type 'integer'" in p for p in schema_problems(isvc, MIN_K8S))
