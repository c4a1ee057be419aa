"""The MLflow model registry as the pipelines use it: references, versions, aliases, files.

A model reference is ``NAME`` (alias ``champion``), ``NAME@ALIAS``, ``NAME/VERSION``, or a path to
an ``.onnx`` file. Aliases only, never the deprecated stages. Downloaded files are cached under
``$NEUROSERVE_HOME/cache/pipelines/<name>/<version>/`` because a version's files never change.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from pipelines import listing, settings
from pipelines.errors import ModelNotFoundError, PipelineError

DEFAULT_ALIAS = listing.CHAMPION
STATE_TAG = "neuroserve.state"
GATE_TAGS = ("neuroserve.gate", "neuroserve.gate.reason", "neuroserve.gate.overridden")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: exactly one of path, version or alias is the selector."""

    name: str
    alias: str | None = None
    version: str | None = None
    path: Path | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return str(self.path)
        if self.version is not None:
            return f"{self.name}/{self.version}"
        return f"{self.name}@{self.alias or DEFAULT_ALIAS}"


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference made concrete: a local ONNX file, and its registry identity if any."""

    path: Path
    name: str
    version: str | None
    run_id: str | None


def parse_ref(ref: str) -> ModelRef:
    """Parse ``NAME[@ALIAS|/VERSION]`` or an ``.onnx`` path; ModelNotFoundError if malformed."""
    text = ref.strip()
    if text.lower().endswith(".onnx"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"ONNX file {text!r} does not exist")
        return ModelRef(name=path.stem, path=path)
    if "@" in text:
        name, alias = text.split("@", 1)
        ref_out = ModelRef(name=name, alias=alias or DEFAULT_ALIAS)
    elif "/" in text:
        name, version = text.rsplit("/", 1)
        if not version.isdigit() or int(version) < 1:
            raise ModelNotFoundError(
                f"model reference {ref!r}: version must be a positive integer, got {version!r}"
            )
        ref_out = ModelRef(name=name, version=version)
    else:
        ref_out = ModelRef(name=text, alias=DEFAULT_ALIAS)
    if not _NAME.match(ref_out.name):
        raise ModelNotFoundError(
            f"model reference {ref!r} is not NAME, NAME@ALIAS, NAME/VERSION or a .onnx file"
        )
    return ref_out


def _known_models(client: MlflowClient) -> list[str]:
    return sorted(m.name for m in client.search_registered_models(max_results=1000))


def get_version(client: MlflowClient, ref: ModelRef) -> ModelVersion:
    """The model version a registry reference names; errors list what does exist."""
    try:
        client.get_registered_model(ref.name)
    except mlflow.exceptions.MlflowException:
        known = ", ".join(_known_models(client)) or "none"
        raise ModelNotFoundError(
            f"no registered model named {ref.name!r}; registered models: {known}"
        ) from None
    if ref.version is not None:
        try:
            return client.get_model_version(ref.name, ref.version)
        except mlflow.exceptions.MlflowException:
            versions = [str(v.version) for v in client.search_model_versions(f"name='{ref.name}'")]
            raise ModelNotFoundError(
                f"model {ref.name!r} has no version {ref.version}; versions: "
                f"{', '.join(sorted(versions, key=int)) or 'none'}"
            ) from None
    alias = ref.alias or DEFAULT_ALIAS
    try:
        return client.get_model_version_by_alias(ref.name, alias)
    except mlflow.exceptions.MlflowException:
        aliases = sorted(client.get_registered_model(ref.name).aliases)
        raise ModelNotFoundError(
            f"model {ref.name!r} has no alias {alias!r}; aliases: {', '.join(aliases) or 'none'}"
        ) from None


def find_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """The current champion of ``name``, or None if the model or the alias does not exist."""
    try:
        return client.get_model_version_by_alias(name, DEFAULT_ALIAS)
    except mlflow.exceptions.MlflowException:
        return None


def download_onnx(client: MlflowClient, mv: ModelVersion) -> Path:
    """The version's ``model.onnx``, downloaded once into the cache."""
    dest = settings.home_dir() / "cache" / "pipelines" / mv.name / str(mv.version)
    found = sorted(dest.rglob("*.onnx")) if dest.exists() else []
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    # The storage location, not ``models:/``: that scheme resolves through MLflow's
    # process-wide registry URI, which may name another store than ``client``'s.
    location = client.get_model_version_download_uri(mv.name, str(mv.version))
    mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dest))
    found = sorted(dest.rglob("*.onnx"))
    if not found:
        raise ModelNotFoundError(f"model {mv.name!r} version {mv.version} holds no .onnx file")
    return found[0]


def resolve(client: MlflowClient | None, ref: ModelRef) -> ResolvedModel:
    """A local ONNX file for the reference (a file path needs no tracking store)."""
    if ref.path is not None:
        return ResolvedModel(path=ref.path, name=ref.name, version=None, run_id=None)
    if client is None:
        raise PipelineError(f"model reference {ref} needs the MLflow registry")
    mv = get_version(client, ref)
    return ResolvedModel(
        path=download_onnx(client, mv), name=mv.name, version=str(mv.version), run_id=mv.run_id
    )


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    """Create the registered model if it does not exist yet (idempotent)."""
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        try:
            client.create_registered_model(
                name, description=f"neuroserve model {name}; served at alias @champion"
            )
        except mlflow.exceptions.MlflowException:
            client.get_registered_model(name)  # created concurrently


def logged_model_id(model_uri: str) -> str | None:
    """The id in ``models:/<model_id>``, MLflow 3's URI of a logged model; None otherwise."""
    rest = model_uri.removeprefix("models:/")
    return rest if rest != model_uri and rest.startswith("m-") and "/" not in rest else None


def create_version(
    client: MlflowClient, name: str, model_uri: str, run_id: str, tags: dict[str, str]
) -> ModelVersion:
    """Register a version and wait until it is READY; it carries ``neuroserve.state=registering``
    until the flow has finished gating it, so a half-finished version is visible as such.

    A logged model's id goes with its ``models:/`` source: an MLflow server refuses the source
    without it (INVALID_PARAMETER_VALUE), where the SQLite store did not ask.
    """
    ensure_registered_model(client, name)
    mv = client.create_model_version(
        name,
        source=model_uri,
        run_id=run_id,
        tags={**tags, STATE_TAG: "registering"},
        model_id=logged_model_id(model_uri),
    )
    deadline = time.monotonic() + 300
    pause = 0.02  # a local store is READY at once; a remote one may take a while
    while mv.status != "READY":
        if mv.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise PipelineError(
                f"model {name!r} version {mv.version} did not become READY "
                f"(status {mv.status}: {mv.status_message})"
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.5)
        mv = client.get_model_version(name, mv.version)
    return mv


def record_decision(
    client: MlflowClient, name: str, version: str, *, alias: str, reason: str, overridden: bool
) -> None:
    """Write the gate's verdict on the version (tags + description) before any alias moves."""
    client.set_model_version_tag(name, version, "neuroserve.gate", alias)
    client.set_model_version_tag(name, version, "neuroserve.gate.reason", reason)
    client.set_model_version_tag(name, version, "neuroserve.gate.overridden", str(overridden))
    client.update_model_version(name, version, description=f"gate: {alias}. {reason}")
    client.set_model_version_tag(name, version, STATE_TAG, "ready")


def set_alias(client: MlflowClient, name: str, alias: str, version: str) -> None:
    """Point ``alias`` at the version: the last step of a train flow."""
    mv = client.get_model_version(name, version)
    if mv.status != "READY" or mv.tags.get(STATE_TAG) != "ready":
        raise PipelineError(
            f"refusing to alias {name} v{version}: status {mv.status}, "
            f"{STATE_TAG}={mv.tags.get(STATE_TAG)!r} (expected READY and 'ready')"
        )
    client.set_registered_model_alias(name, alias, version)
