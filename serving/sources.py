"""Where model files come from: a plain directory or the MLflow registry.

A source answers two questions, both synchronous (the repository runs them on a thread):
``scan()`` — which models and versions exist right now, each with a fingerprint that changes when
the bytes behind the version change — and ``fetch()`` — a local path to the version's ``.onnx``.
Only ``.onnx`` files are ever returned; nothing else in a model directory is opened.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from serving.errors import InvalidNameError
from serving.logs import log_event

MODEL_FILE = "model.onnx"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION_RE = re.compile(r"^[1-9][0-9]{0,17}$")


def validate_model_name(name: str) -> str:
    """Return ``name`` if it is a safe single path component, else raise InvalidNameError."""
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidNameError("model name", name)
    return name


def validate_version(version: str) -> str:
    """Return ``version`` if it is a positive integer string, else raise InvalidNameError."""
    if not _VERSION_RE.fullmatch(version):
        raise InvalidNameError("model version", version)
    return version


@dataclass(frozen=True)
class Candidate:
    """One version a source offers; ``fingerprint`` changes when its content changes."""

    name: str
    version: str
    fingerprint: str


class ModelSource(abc.ABC):
    """A place models come from."""

    description: str = ""

    @abc.abstractmethod
    def scan(self) -> dict[str, list[Candidate]]:
        """Models and their versions available now (versions in any order)."""

    @abc.abstractmethod
    def fetch(self, candidate: Candidate) -> Path:
        """A local path to the candidate's ONNX file."""


class DirectorySource(ModelSource):
    """``<root>/<model>/<version>/model.onnx``; symlinks leaving the root are ignored."""

    def __init__(self, root: Path, names: list[str] | None = None) -> None:
        self.root = root.resolve()
        self.names = [validate_model_name(n) for n in names or []]
        self.description = f"directory {self.root}"

    def _inside(self, path: Path) -> bool:
        try:
            path.resolve().relative_to(self.root)
        except (ValueError, OSError):
            return False
        return True

    def scan(self) -> dict[str, list[Candidate]]:
        """List valid model directories and their numeric version folders with a model file."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {self.root} is not a directory")
        found: dict[str, list[Candidate]] = {}
        for model_dir in sorted(self.root.iterdir()):
            name = model_dir.name
            if (
                not _NAME_RE.fullmatch(name)
                or not model_dir.is_dir()
                or not self._inside(model_dir)
            ):
                continue
            if self.names and name not in self.names:
                continue
            versions: list[Candidate] = []
            for version_dir in model_dir.iterdir():
                model_file = version_dir / MODEL_FILE
                if not _VERSION_RE.fullmatch(version_dir.name) or not model_file.is_file():
                    continue
                if not self._inside(model_file):
                    continue
                stat = model_file.stat()
                versions.append(
                    Candidate(name, version_dir.name, f"{stat.st_mtime_ns}:{stat.st_size}")
                )
            found[name] = versions
        return found

    def fetch(self, candidate: Candidate) -> Path:
        """The model file inside the root (re-validated, never outside it)."""
        path = (
            self.root
            / validate_model_name(candidate.name)
            / validate_version(candidate.version)
            / MODEL_FILE
        )
        if not self._inside(path):
            raise InvalidNameError("model path", str(path))
        return path


class MlflowSource(ModelSource):
    """Registered models carrying an alias (default ``champion``), cached on local disk.

    Each scan records ``<cache>/<model>/<alias>.json`` (version, run); each fetched version is kept
    at ``<cache>/<model>/<version>/model.onnx``. When the registry cannot be reached the scan falls
    back to those records, so a restart during an MLflow outage serves the last known versions.
    """

    def __init__(
        self, tracking_uri: str, alias: str, cache_dir: Path, names: list[str] | None = None
    ) -> None:
        self.tracking_uri = tracking_uri
        self.alias = alias
        self.cache_dir = cache_dir
        self.names = [validate_model_name(n) for n in names or []]
        self.description = f"MLflow registry {tracking_uri} (alias {alias})"
        self.offline = False
        # MLflow's HTTP defaults (7 retries, backoff factor 2) block one scan of an unreachable
        # registry for ~4 minutes, long past the point where the cache should be serving.
        # Explicit environment settings still win.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

    def _client(self) -> object:
        from mlflow.tracking import MlflowClient  # heavy import, only for this source

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _pointer(self, name: str) -> Path:
        return self.cache_dir / name / f"{self.alias}.json"

    def scan(self) -> dict[str, list[Candidate]]:
        """Ask the registry for alias holders; fall back to the cache if it is unreachable."""
        try:
            found = self._scan_registry()
        except Exception as exc:  # any registry failure: serve from the cache
            if not self.offline:
                log_event(
                    "registry_unreachable",
                    logging.WARNING,
                    uri=self.tracking_uri,
                    error=f"{type(exc).__name__}: {exc}"[:300],
                    fallback=self.cache_dir,
                )
            self.offline = True
            return self._scan_cache()
        if self.offline:
            log_event("registry_reachable", uri=self.tracking_uri)
        self.offline = False
        return found

    def _scan_registry(self) -> dict[str, list[Candidate]]:
        client = self._client()
        names = self.names or [
            m.name
            for m in client.search_registered_models()  # type: ignore[attr-defined]
            if self.alias in (m.aliases or {})
        ]
        found: dict[str, list[Candidate]] = {}
        for name in names:
            if not _NAME_RE.fullmatch(name):
                log_event("model_skipped", logging.WARNING, model=name, reason="unsafe name")
                continue
            try:
                mv = client.get_model_version_by_alias(name, self.alias)  # type: ignore[attr-defined]
            except Exception as exc:
                if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
                    found[name] = []
                    continue
                raise
            version = str(mv.version)
            candidate = Candidate(name, version, f"mlflow:{mv.run_id}:{version}")
            pointer = self._pointer(name)
            pointer.parent.mkdir(parents=True, exist_ok=True)
            pointer.write_text(
                json.dumps({"version": version, "fingerprint": candidate.fingerprint})
            )
            found[name] = [candidate]
        return found

    def _scan_cache(self) -> dict[str, list[Candidate]]:
        found: dict[str, list[Candidate]] = {}
        if not self.cache_dir.is_dir():
            return found
        for pointer in sorted(self.cache_dir.glob(f"*/{self.alias}.json")):
            name = pointer.parent.name
            if not _NAME_RE.fullmatch(name) or (self.names and name not in self.names):
                continue
            record = json.loads(pointer.read_text())
            version = validate_version(str(record["version"]))
            if (pointer.parent / version / MODEL_FILE).is_file():
                found[name] = [Candidate(name, version, str(record["fingerprint"]))]
        return found

    def fetch(self, candidate: Candidate) -> Path:
        """The cached ONNX file, downloading ``models:/<name>/<version>`` on a cache miss."""
        name = validate_model_name(candidate.name)
        version = validate_version(candidate.version)
        target = self.cache_dir / name / version / MODEL_FILE
        if target.is_file():
            return target
        import mlflow.artifacts

        target.parent.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent.parent) as tmp:
            # The storage location resolved by *this* source's client: ``models:/`` would be
            # resolved through MLflow's process-wide registry URI, which may name another store.
            location = self._client().get_model_version_download_uri(name, version)  # type: ignore[attr-defined]
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=location, dst_path=tmp, tracking_uri=self.tracking_uri
                )
            )
            onnx_files = sorted(local.rglob("*.onnx")) if local.is_dir() else [local]
            onnx_files = [p for p in onnx_files if p.suffix == ".onnx" and p.is_file()]
            if not onnx_files:
                raise FileNotFoundError(f"models:/{name}/{version} holds no .onnx file")
            staged = Path(tmp) / "staged"
            staged.mkdir()
            shutil.copyfile(onnx_files[0], staged / MODEL_FILE)
            if target.parent.exists():
                shutil.rmtree(target.parent)
            staged.rename(target.parent)  # atomic: a half-copied file is never visible
        log_event("model_cached", model=name, version=version, path=target)
        return target
