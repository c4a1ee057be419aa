"""The compose stack's services as local processes, configured from docker-compose.yml itself.

No Docker engine runs here or on CI, so each service runs as the process its container would run:
the command, health check and environment are read from ``docker-compose.yml`` (and the image's
Dockerfile where the compose file leaves them to it), with the variables ``cp .env.example .env``
would give. Only addresses are changed: service names and container ports become loopback and
free ports, container paths (volumes, ``WORKDIR``) become temporary folders. A variable renamed on
one side, a wrong driver in a URI, a port that does not match, or a package an image must install
and does not, therefore fails the tests that use this module.

Two services have stand-ins: PostgreSQL runs from Debian's packages (the compose file pins the
``postgres`` image; its entry point's steps, user, password, ``POSTGRES_DB`` and init scripts, are
replayed here), and the S3 API is ``moto``'s server instead of MinIO (whose binary cannot be
fetched here), with the bucket made as ``minio-init`` makes it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
VENV_BIN = Path(sys.executable).parent

#: Where Debian's PostgreSQL packages put the server's programs: <this>/<major version>/bin.
POSTGRES_LIB = Path("/usr/lib/postgresql")
#: The account Debian's package creates; PostgreSQL refuses to run as root.
POSTGRES_ACCOUNT = "postgres"


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's ``bin`` folder (with initdb and pg_ctl), or None."""
    found = [
        p
        for p in POSTGRES_LIB.glob("*/bin")
        if (p / "initdb").is_file() and (p / "pg_ctl").is_file()
    ]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


def wait_until(
    condition: Callable[[], bool],
    what: str,
    timeout: float,
    process: Process | None = None,
    interval: float = 0.25,
) -> float:
    """Poll ``condition`` until true; seconds waited. Fails naming ``what`` (and the process's
    log) on timeout, or at once if ``process`` exits while waited for."""
    start = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - start
        if process is not None and not process.alive():
            raise AssertionError(
                f"{process.name} exited ({process.returncode()}) before {what}:\n"
                f"{process.log_tail()}"
            )
        if time.monotonic() - start > timeout:
            tail = f":\n{process.log_tail()}" if process is not None else ""
            raise AssertionError(f"no {what} within {timeout:.0f} s{tail}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# reading the compose file

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-)?([^}]*)\}")


def dotenv(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """``KEY=VALUE`` lines of an env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def interpolate(text: str, values: Mapping[str, str]) -> str:
    """Compose's substitution: ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``$$``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, default = match.group(1), match.group(2), match.group(3)
        value = values.get(name)
        if operator == ":-" and not value:
            return default
        if operator == "-" and value is None:
            return default
        if value is None:
            raise KeyError(f"the compose file uses ${{{name}}}, which .env.example does not set")
        return value

    return _VARIABLE.sub(substitute, text)


@dataclass(frozen=True)
class Dockerfile:
    """What a Dockerfile says about the process it runs: work dir, copies, env, command."""

    workdir: str
    copies: list[tuple[list[str], str]]
    env: dict[str, str]
    cmd: list[str]

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        workdir, copies, env, cmd = "/", [], {}, []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            word, _, rest = line.partition(" ")
            if word == "WORKDIR":
                workdir = rest.strip()
            elif word == "COPY":
                parts = shlex.split(rest)
                copies.append((parts[:-1], parts[-1]))
            elif word == "ENV":
                env.update(dict(item.split("=", 1) for item in shlex.split(rest)))
            elif word == "CMD":
                cmd = list(json.loads(rest))
        # The image's PATH names its own venv, which is this interpreter's here (base_env).
        env.pop("PATH", None)
        return cls(workdir=workdir, copies=copies, env=env, cmd=cmd)

    def build_context(self, target: Path) -> Path:
        """Lay out the image's ``WORKDIR`` as its COPY lines do (sources from the repository)."""
        target.mkdir(parents=True, exist_ok=True)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for sources, dest in self.copies:
            into = target / dest
            for source in sources:
                src = ROOT / source
                if src.is_dir():
                    shutil.copytree(src, into, ignore=ignore, dirs_exist_ok=True)
                else:
                    into.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, into / src.name)
        return target


class Compose:
    """docker-compose.yml with the values of .env.example substituted."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
        self.values = dotenv()

    def service(self, name: str) -> dict[str, Any]:
        service = self.data["services"].get(name)
        assert service is not None, f"docker-compose.yml has no service {name!r}"
        return dict(service)

    def environment(self, name: str) -> dict[str, str]:
        env = self.service(name).get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        return {str(k): interpolate(str(v), self.values) for k, v in env.items()}

    def command(self, name: str) -> list[str]:
        command = self.service(name)["command"]
        if isinstance(command, list):
            return [interpolate(str(part), self.values) for part in command]
        return shlex.split(interpolate(str(command), self.values))

    def healthcheck(self, name: str) -> list[str]:
        """The health check as argv (``CMD`` lists, or ``CMD-SHELL`` run by ``/bin/sh -c``)."""
        raw = self.service(name)["healthcheck"]["test"]
        test = [interpolate(str(part), self.values) for part in raw]
        if test[0] == "CMD-SHELL":
            return ["/bin/sh", "-c", test[1]]
        assert test[0] == "CMD", f"{name}: unexpected health check form {test[0]!r}"
        return test[1:]

    def volumes(self, name: str) -> list[tuple[str, str]]:
        """(source, container path) of each mount."""
        out = []
        for mount in self.service(name).get("volumes", []):
            source, target = str(mount).split(":")[:2]
            out.append((source, target))
        return out

    def dockerfile(self, name: str) -> Dockerfile:
        build = self.service(name)["build"]
        return Dockerfile.read(ROOT / build.get("context", ".") / build["dockerfile"])


_HOST_PORT = re.compile(
    r"\b(postgres|minio|mlflow|prefect-server|serving|localhost|127\.0\.0\.1|0\.0\.0\.0):(\d+)\b"
)
_PORT_FLAG = re.compile(r"--port[ =](\d+)")


@dataclass
class Addresses:
    """Compose addresses to local ones: container ports to free loopback ports, container paths
    to folders. A port or service name the compose file uses and this map lacks is an error."""

    ports: dict[int, int]
    paths: dict[str, Path] = field(default_factory=dict)

    def port(self, compose_port: int) -> int:
        if compose_port not in self.ports:
            raise KeyError(f"the compose file uses port {compose_port}; the test maps no such port")
        return self.ports[compose_port]

    def text(self, text: str) -> str:
        text = _HOST_PORT.sub(lambda m: f"127.0.0.1:{self.port(int(m.group(2)))}", text)
        text = _PORT_FLAG.sub(lambda m: f"--port {self.port(int(m.group(1)))}", text)
        text = text.replace("0.0.0.0", "127.0.0.1")
        for container, local in self.paths.items():
            if text == container or text.startswith(container + "/"):
                text = str(local) + text[len(container) :]
        return text

    def argv(self, argv: list[str]) -> list[str]:
        """A command's words, localized; a ``--port`` flag's separate value is mapped too."""
        out = []
        for i, word in enumerate(argv):
            if i and argv[i - 1] == "--port" and word.isdigit():
                out.append(str(self.port(int(word))))
            else:
                out.append(self.text(word))
        return out

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        out = {}
        for key, value in env.items():
            if key.endswith("_PORT") and value.isdigit():
                out[key] = str(self.port(int(value)))
            else:
                out[key] = self.text(value)
        return out


def base_env() -> dict[str, str]:
    """This machine's environment without the test harness's own Prefect, MLflow, AWS and
    neuroserve settings (a container starts without them); the venv's programs first on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_", "NEUROSERVE_", "PG"))
    }
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env["DO_NOT_TRACK"] = "1"  # no telemetry attempts from a machine that cannot reach out
    return env


# --------------------------------------------------------------------------------------------
# processes


class Process:
    """A service process in its own session (so its children stop with it), output to a log."""

    def __init__(
        self, name: str, argv: list[str], env: Mapping[str, str], log_dir: Path, cwd: Path
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.cwd = cwd
        self.log = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.cwd.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as sink:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGTERM) -> None:
        """Signal the process group; SIGKILL what is left after ``timeout``."""
        if self.popen is None or self.popen.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        # Children that outlived their parent (a worker's flow run) go with the group.
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]


def stop_all(processes: list[Process], timeout: float = 20.0) -> None:
    """Stop every process at once (SIGTERM to all first), so teardown waits for the slowest
    graceful shutdown rather than the sum of them."""
    for process in processes:
        if process.alive() and process.popen is not None:
            with suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGTERM)
    for process in processes:
        process.stop(timeout)


def http_ok(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def post_json(url: str, body: Any, timeout: float = 10.0) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read())


class Postgres:
    """A PostgreSQL cluster owned by the ``postgres`` account in a temporary folder.

    Replays what the compose file's ``postgres`` image does on first start: ``POSTGRES_USER``
    as the superuser with ``POSTGRES_PASSWORD`` (password authentication on TCP), the
    ``POSTGRES_DB`` database, then the mounted ``docker-entrypoint-initdb.d`` scripts.
    """

    def __init__(self, bin_dir: Path, port: int, user: str, password: str) -> None:
        self.bin = bin_dir
        self.port = port
        self.user = user
        self.password = password
        # Under /tmp itself: pytest's temporary folders are private to root, and postgres must
        # reach its own.
        self.root = Path(tempfile.mkdtemp(prefix="neuroserve-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.started = False

    def _as_postgres(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["runuser", "-u", POSTGRES_ACCOUNT, "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )
        assert result.returncode == 0, f"{' '.join(argv)} failed: {result.stderr[-2000:]}"
        return result

    def client_env(self) -> dict[str, str]:
        env = base_env()
        env.update(
            PGHOST="127.0.0.1",
            PGPORT=str(self.port),
            PGUSER=self.user,
            PGPASSWORD=self.password,
            PATH=os.pathsep.join([str(self.bin), env["PATH"]]),
        )
        return env

    def init(self) -> None:
        shutil.chown(self.root, POSTGRES_ACCOUNT, POSTGRES_ACCOUNT)
        pwfile = self.root / "password"
        pwfile.write_text(self.password + "\n")
        shutil.chown(pwfile, POSTGRES_ACCOUNT, POSTGRES_ACCOUNT)
        pwfile.chmod(0o600)
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user,
            f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C",
            "--no-sync",
        )  # fmt: skip

    def _options(self) -> str:
        # fsync off: the data is thrown away, and a restart is the test of connections, not disks.
        return (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=200"
        )

    def start(self) -> None:
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
            "-t", "60", "-o", self._options(), "start",
        )  # fmt: skip
        self.started = True

    def restart(self) -> None:
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
            "-t", "60", "-m", "fast", "-o", self._options(), "restart",
        )  # fmt: skip

    def stop(self) -> None:
        if self.started:
            with suppress(AssertionError, subprocess.TimeoutExpired):
                self._as_postgres(
                    str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-m", "immediate", "stop"
                )
            self.started = False

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A client program (psql, createdb, pg_isready...) against the cluster over TCP."""
        program = str(self.bin / argv[0]) if (self.bin / argv[0]).is_file() else argv[0]
        result = subprocess.run(
            [program, *argv[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=self.client_env(),
        )
        if check:
            assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr[-2000:]}"
        return result

    def query(self, database: str, sql: str) -> str:
        """One value from ``sql`` (psql, tuples only)."""
        return self.run("psql", "-v", "ON_ERROR_STOP=1", "-d", database, "-tAc", sql).stdout.strip()


class S3:
    """moto's S3 server on loopback (MinIO's stand-in)."""

    def __init__(self, port: int, log_dir: Path) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        self.process = Process("s3", argv, base_env(), log_dir, cwd=log_dir)

    def start(self) -> None:
        self.process.start()
        wait_until(
            lambda: http_ok(self.endpoint + "/moto-api/data.json"),
            "S3 API answer",
            60,
            self.process,
        )

    def client(self, access_key: str, secret_key: str) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name="us-east-1",
        )
