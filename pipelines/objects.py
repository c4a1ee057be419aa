"""``s3://bucket/key`` paths for the batch scorer: objects fetched to local files, results put
back whole.

Scoring validates the whole input before it scores a row and memory-maps ``.npz`` files, so an
input object (or every image under a prefix) is first copied to a local temporary folder and read
there exactly as a local file would be. An output is written locally first and then put in one
upload, so the object appears only complete: S3 shows an object once its single PUT or its
multipart upload's completion succeeds, and a failed upload is never completed.

The endpoint and credentials are found by the same function the server's inference capture uses
(:func:`serving.capture.s3_filesystem`: ``AWS_*`` credentials and region, the endpoint from
``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or ``MLFLOW_S3_ENDPOINT_URL``), so one set of
variables configures the compose stack's MinIO for both. Every failure is a
:class:`~pipelines.errors.ScoringInputError` naming the ``s3://`` path and what went wrong.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal

from pipelines.errors import ScoringInputError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

SCHEME = "s3://"
#: Objects under a prefix are fetched this many at a time (S3 latency, not bandwidth, bounds
#: a folder of small images).
PARALLEL_DOWNLOADS = 16


def is_uri(text: str | os.PathLike[str]) -> bool:
    """True for an ``s3://`` path (the scheme in any case, as URI schemes are)."""
    return str(text)[: len(SCHEME)].lower() == SCHEME


@dataclass(frozen=True)
class ObjectUri:
    """``s3://bucket/key``; ``prefix`` when it names a folder (a trailing ``/`` or no key)."""

    bucket: str
    key: str  # without a trailing "/"; "" for the whole bucket
    prefix: bool

    @classmethod
    def parse(cls, text: str, what: str = "input") -> ObjectUri:
        """Split an ``s3://`` path; one without a bucket is an error naming the form expected
        (``what``: "input", which may be a prefix, or "output")."""
        rest = str(text)[len(SCHEME) :]
        bucket, _, key = rest.partition("/")
        if not bucket:
            folders = " (or s3://BUCKET/PREFIX/ for a folder of images)" if what == "input" else ""
            raise ScoringInputError(
                f"{what} {text!r} names no bucket; expected s3://BUCKET/KEY{folders}"
            )
        return cls(bucket=bucket, key=key.strip("/"), prefix=not key or key.endswith("/"))

    @property
    def path(self) -> str:
        """The path pyarrow's S3 file system takes: ``bucket/key``."""
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    @property
    def name(self) -> str:
        """The key's last part (an output's file name, with its suffix)."""
        return PurePosixPath(self.key).name

    def __str__(self) -> str:
        tail = "/" if self.prefix and self.key else ""
        return f"{SCHEME}{self.bucket}/{self.key}{tail}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _credentials_configured() -> bool:
    """Whether the environment names S3 credentials: ``AWS_*`` keys, or a profile or shared
    credentials file (what a user sets; instance roles are not visible from here)."""
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if env.get("AWS_PROFILE"):
        return True
    shared = env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"
    return Path(shared).expanduser().is_file()


class ObjectStore:
    """The S3 API the environment points at, through ``pyarrow.fs``."""

    def __init__(self) -> None:
        from serving.capture import s3_filesystem

        try:
            self.fs: pafs.FileSystem = s3_filesystem()
        except (OSError, ValueError) as exc:
            raise ScoringInputError(f"the S3 settings are unusable: {_one_line(exc)}") from None

    @contextmanager
    def _request(self, uri: ObjectUri | str, doing: str) -> Iterator[None]:
        """Turn a failed S3 request into one line naming the path, and why when it can tell."""
        try:
            yield
        except ScoringInputError:
            raise
        except OSError as exc:
            detail = _one_line(exc)
            if "NETWORK_CONNECTION" in detail or "curlCode" in detail:
                why = "the S3 endpoint could not be reached"
            else:
                why = f"{doing} failed"
            hint = (
                "; no S3 credentials are set (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                "a profile in ~/.aws/credentials)"
                if not _credentials_configured()
                else ""
            )
            raise ScoringInputError(f"{uri}: {why}: {detail}{hint}") from None

    def _no_bucket(self, uri: ObjectUri) -> ScoringInputError | None:
        """The error when ``uri``'s bucket does not exist, else None."""
        import pyarrow.fs as pafs

        with self._request(uri, "checking the bucket"):
            bucket = self.fs.get_file_info(uri.bucket)
        if bucket.type == pafs.FileType.NotFound:
            return ScoringInputError(f"{uri}: bucket {uri.bucket!r} does not exist")
        return None

    def _missing(self, uri: ObjectUri) -> ScoringInputError:
        """The error for a path that is not there: its bucket, or the key or prefix in it."""
        no_bucket = self._no_bucket(uri)
        if no_bucket is not None:
            return no_bucket
        if uri.prefix:
            return ScoringInputError(f"{uri}: no objects under this prefix")
        return ScoringInputError(f"{uri}: no such object in bucket {uri.bucket!r}")

    def kind(self, uri: ObjectUri) -> Literal["object", "prefix"]:
        """Whether ``uri`` is one object or a prefix with objects under it (else an error)."""
        import pyarrow.fs as pafs

        with self._request(uri, "reading"):
            info = self.fs.get_file_info(uri.path)
        if info.type == pafs.FileType.File and not uri.prefix:
            return "object"
        if info.type == pafs.FileType.Directory:
            return "prefix"
        raise self._missing(uri)

    def require_bucket(self, uri: ObjectUri) -> None:
        """Fail now, before anything is scored, when the bucket to write to is not there."""
        no_bucket = self._no_bucket(uri)
        if no_bucket is not None:
            raise no_bucket

    def download(self, uri: ObjectUri, into: Path) -> Path:
        """Copy one object to ``into/<its name>``; returns that file."""
        import pyarrow.fs as pafs

        target = into / uri.name
        into.mkdir(parents=True, exist_ok=True)
        with self._request(uri, "reading"):
            pafs.copy_files(
                uri.path,
                str(target),
                source_filesystem=self.fs,
                destination_filesystem=pafs.LocalFileSystem(),
            )
        return target

    def download_prefix(self, uri: ObjectUri, into: Path, suffixes: tuple[str, ...]) -> int:
        """Copy the objects directly under a prefix whose names end in ``suffixes`` (any case)
        into the folder ``into``; returns how many. A prefix with no objects is an error."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(uri.path, recursive=False, allow_not_found=True)
        with self._request(uri, "listing"):
            listed = self.fs.get_file_info(selector)
        if not listed:
            raise self._missing(uri)
        files = [i for i in listed if i.type == pafs.FileType.File]
        if not files:
            below = sorted(i.base_name + "/" for i in listed)
            raise ScoringInputError(
                f"{uri}: no objects directly under this prefix, only the prefixes "
                f"{', '.join(below[:5])}{' ...' if len(below) > 5 else ''}"
            )
        wanted = [i for i in files if i.base_name.lower().endswith(suffixes)]
        into.mkdir(parents=True, exist_ok=True)
        local = pafs.LocalFileSystem()

        def fetch(info: pafs.FileInfo) -> None:
            with self._request(f"{SCHEME}{info.path}", "reading"):
                pafs.copy_files(
                    info.path,
                    str(into / info.base_name),
                    source_filesystem=self.fs,
                    destination_filesystem=local,
                    use_threads=False,
                )

        if wanted:
            with ThreadPoolExecutor(min(PARALLEL_DOWNLOADS, len(wanted))) as pool:
                list(pool.map(fetch, wanted))
        return len(wanted)

    def upload(self, source: Path, uri: ObjectUri) -> None:
        """Put a complete local file at ``uri`` in one upload (no partial object on failure)."""
        import pyarrow.fs as pafs

        with self._request(uri, "writing"):
            pafs.copy_files(
                str(source),
                uri.path,
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=self.fs,
            )
