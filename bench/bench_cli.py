"""The command line's fixed costs, before and after: wall time and peak memory per command.

Each command runs as its own process, exactly as a user types it, once per round on each side;
rounds interleave the sides so a busy moment on this shared machine hits both, and the table
shows medians. "before" is a git worktree of ``BASELINE_REF`` run with the same interpreter and
packages (its directory first on ``PYTHONPATH``); "after" is this checkout. Every round starts
from a fresh ``NEUROSERVE_HOME`` per side, so "train (first)" includes whatever the first
command of a new home pays (for "after": starting the shared local Prefect server).

Then two ``train`` commands are started at the same moment in a fresh home on each side, and the
Prefect server log of the "after" side is searched for SQLite's "database is locked"
(PrefectHQ/prefect#18934).

Usage: ``python -m bench.bench_cli [--rounds 3] [--baseline REF]`` (``BASELINE_REF`` also works).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The commit before the fast-CLI work (issue 15).
DEFAULT_BASELINE = "e165f07"
TRAIN = ["train", "fnn", "--data", "wine", "--epochs", "1"]
#: GNU time, for each command's own peak memory.
TIME = shutil.which("time", path="/usr/bin:/bin") or "/usr/bin/time"
SUBCOMMANDS = ["train", "compare", "retrain", "schedule", "score", "models", "demo"]
#: Goals from the issue: (wall seconds, peak MiB); None = not a goal.
GOALS: dict[str, tuple[float, float | None]] = {
    "--help": (2.0, 200),
    "<subcommand> --help (slowest)": (2.0, 200),
    "serve --help": (2.0, 200),
    "models (two registered models)": (2.0, 200),
    "predict (server up)": (2.0, 200),
    "train fnn wine 1 epoch (first, fresh home)": (20.0, None),
    "train fnn wine 1 epoch (second)": (10.0, None),
    "train fnn wine 1 epoch (third, new name)": (10.0, None),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Side:
    """One code version: how to run its ``neuroserve`` and a fresh home per round."""

    def __init__(self, name: str, code_dir: Path, scratch: Path) -> None:
        self.name = name
        self.code_dir = code_dir
        self.scratch = scratch
        self.home = scratch

    def new_home(self, label: str) -> Path:
        self.home = Path(tempfile.mkdtemp(prefix=f"{self.name}-{label}-", dir=self.scratch))
        return self.home

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "MLFLOW_")) and k != "NEUROSERVE_PREFECT_API"
        }
        env.update(
            NEUROSERVE_HOME=str(self.home),
            PYTHONPATH=str(self.code_dir),
            COLUMNS="200",
            NO_COLOR="1",
        )
        return env

    def argv(self, args: list[str]) -> list[str]:
        code = "from pipelines.cli import main; main()"
        return [sys.executable, "-c", code, *args]

    def run(self, args: list[str]) -> tuple[float, float, str]:
        """(wall seconds, peak RSS MiB, output) of one command; raises if it failed.

        Peak memory comes from GNU time wrapped around the command: a child forked from this
        (large) process would report this process's pages as its own high-water mark.
        """
        with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
            started = time.perf_counter()
            proc = subprocess.run(
                [TIME, "-f", "%M", "-o", rss.name, *self.argv(args)],
                env=self.env(),
                cwd=self.scratch,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                check=False,
            )
            wall = time.perf_counter() - started
            peak_kib = float(rss.read().split()[-1])
        out = proc.stdout.decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"{self.name}: neuroserve {' '.join(args)} failed:\n{out[-3000:]}")
        return wall, peak_kib / 1024, out

    def stop_local_server(self) -> float | None:
        """Stop this home's shared Prefect server (the "after" side); its RSS MiB if it ran."""
        state_file = self.home / "prefect" / "server.json"
        if not state_file.exists():
            return None
        import psutil

        pid = int(json.loads(state_file.read_text())["pid"])
        try:
            rss = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            rss = None
        subprocess.run(
            self.argv(["server", "stop"]), env=self.env(), capture_output=True, check=False
        )
        return rss


def _start_model_server(side: Side) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = side.env() | {"PYTHONPATH": str(ROOT)}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{side.home / 'mlflow.db'}"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "serving", "--grpc-port", str(port), "--http-port", "-1"),
            *("--metrics-port", str(_free_port()), "--model", "wine-fnn"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{port}"
    sys.path.insert(0, str(ROOT))
    from serving.client import InferenceClient

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with InferenceClient(address) as client:
                if client.model_ready("wine-fnn"):
                    return proc, address
        except Exception:  # not up yet
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("model server did not become ready")


def _one_round(
    sides: list[Side],
    r: int,
    rows: dict[tuple[str, str], list[tuple[float, float]]],
    csv: Path,
    server_rss: list[float],
) -> None:
    def record(label: str, side: Side, args: list[str]) -> str:
        wall, mib, out = side.run(args)
        rows[(label, side.name)].append((wall, mib))
        print(f"  round {r} {side.name:6s} {label:45s} {wall:6.2f} s {mib:6.0f} MiB", flush=True)
        return out

    for side in sides:
        side.new_home(f"r{r}")
    for label, args in (
        ("train fnn wine 1 epoch (first, fresh home)", TRAIN),
        ("train fnn wine 1 epoch (second)", TRAIN),
        ("train fnn wine 1 epoch (third, new name)", [*TRAIN, "--name", "wine-fnn-b"]),
    ):
        for side in sides if r % 2 else reversed(sides):
            record(label, side, args)
    for _ in range(3):
        for side in sides:
            out = record("models (two registered models)", side, ["models"])
            assert "wine-fnn-b" in out and "wine-fnn " in out, out
            record("--help", side, ["--help"])
            record("serve --help", side, ["serve", "--help"])
            worst = max((side.run([c, "--help"])[:2] for c in SUBCOMMANDS), key=lambda t: t[0])
            rows[("<subcommand> --help (slowest)", side.name)].append(worst)
    server, address = _start_model_server(sides[-1])
    try:
        for _ in range(3):
            for side in sides:
                out = record(
                    "predict (server up)",
                    side,
                    ["predict", "wine-fnn", "--url", address, "--input", str(csv)],
                )
                assert "class_" in out, out
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    for side in sides:
        rss = side.stop_local_server()
        if rss is not None:
            server_rss.append(rss)


def _concurrent(side: Side) -> tuple[list[float], bool, int]:
    """Two trains started together in a fresh home: walls, both ok, 'database is locked' count."""
    side.new_home("concurrent")
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            side.argv(TRAIN),
            env=side.env(),
            cwd=side.scratch,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(2)
    ]
    walls, ok = [], True
    outputs = []
    for p in procs:
        out = p.communicate(timeout=600)[0].decode(errors="replace")
        walls.append(time.perf_counter() - started)
        ok = ok and p.returncode == 0
        outputs.append(out)
    log = side.home / "prefect" / "server.log"
    text = (log.read_text(errors="replace") if log.exists() else "") + "".join(outputs)
    locked = text.count("database is locked")
    side.stop_local_server()
    return walls, ok, locked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default=os.environ.get("BASELINE_REF", DEFAULT_BASELINE))
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    worktree = scratch / "baseline"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-f", str(worktree), args.baseline],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    sides = [Side("before", worktree, scratch), Side("after", ROOT, scratch)]
    csv = scratch / "wine.csv"
    from sklearn.datasets import load_wine

    x = load_wine().data[:3]
    csv.write_text("\n".join(",".join(f"{v:.6g}" for v in row) for row in x) + "\n")
    rows: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    server_rss: list[float] = []
    try:
        for r in range(1, args.rounds + 1):
            _one_round(sides, r, rows, csv, server_rss)
        concurrent = {side.name: _concurrent(side) for side in sides}
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(worktree)],
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
    _print_table(args, rows, server_rss, concurrent)
    shutil.rmtree(scratch, ignore_errors=True)


def _print_table(
    args: argparse.Namespace,
    rows: dict[tuple[str, str], list[tuple[float, float]]],
    server_rss: list[float],
    concurrent: dict[str, tuple[list[float], bool, int]],
) -> None:
    print(
        f"\nbaseline {args.baseline}; medians of {args.rounds} interleaved rounds "
        "(whole-process wall, peak RSS of the command's own process)\n"
    )
    print(
        "| command | before wall | before MiB | after wall | after MiB | before/after "
        "| goal | met |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for label, (goal_s, goal_mib) in GOALS.items():
        b = rows.get((label, "before"), [])
        a = rows.get((label, "after"), [])
        if not a:
            continue
        bw = statistics.median(w for w, _ in b) if b else float("nan")
        bm = statistics.median(m for _, m in b) if b else float("nan")
        aw = statistics.median(w for w, _ in a)
        am = statistics.median(m for _, m in a)
        worst_w = max(w for w, _ in a)
        met = aw <= goal_s and (goal_mib is None or am <= goal_mib)
        goal = f"≤ {goal_s:g} s" + (f", ≤ {goal_mib:g} MiB" if goal_mib else "")
        print(
            f"| `{label}` | {bw:.2f} s | {bm:.0f} | {aw:.2f} s (max {worst_w:.2f}) | {am:.0f} "
            f"| {bw / aw:.1f}× | {goal} | {'yes' if met else 'NO'} |"
        )
    if server_rss:
        print(
            f"\nThe shared local Prefect server (after) holds {statistics.median(server_rss):.0f} "
            "MiB of its own while it runs (not counted above; `neuroserve server stop` ends it)."
        )
    print("\nTwo `train` commands started at the same moment in a fresh home:\n")
    print("| side | walls | both succeeded | 'database is locked' lines |")
    print("| --- | --- | --- | ---: |")
    for name, (walls, ok, locked) in concurrent.items():
        print(
            f"| {name} | {', '.join(f'{w:.1f} s' for w in walls)} | {'yes' if ok else 'NO'} "
            f"| {locked} |"
        )


if __name__ == "__main__":
    main()
