"""Data-parallel training over several processes: torch's DistributedDataParallel under torchrun.

One concept, three places it shows up:

* **The launcher** (:func:`launch`): ``neuroserve train ... --nproc N`` runs the same command in
  ``N`` processes through torch's elastic launcher (what ``torchrun --standalone`` does), with
  ``max_restarts=0``: a restarted rank 0 would open a second MLflow run. A failed process is
  reported as one :class:`LaunchError` naming its rank and error, found among the failures the
  launcher collected (processes that only stopped because another one failed are not the cause).
* **The world** (:class:`World`, :func:`join`): every process started by torchrun (ours, or the
  user's own ``torchrun`` on several nodes) reads its rank from the environment, joins the
  process group (NCCL with one GPU per process when the run trains on CUDA, gloo on CPU cores:
  ``training.device`` decides from the spec's ``--device``) and trains. Global rank 0 runs the
  whole flow (MLflow, export, gate); the others only train.
* **The loop** (``training.loop.fit`` asks :func:`current`): the module is wrapped in DDP, each
  process reads its shard of every epoch through ``DistributedSampler`` with
  ``batch_size / world_size`` samples of every global batch (so the spec's batch size and
  learning rate mean what they mean in one process), the training loss is all-reduced, and rank
  0's validation logs and stop decision are broadcast so early stopping and the best checkpoint
  are the same decision everywhere.

A process that fails while others wait in a collective makes those fail with gloo's connection
error, which the loop turns into :class:`PeerError`. Rank 0 also turns the launcher's SIGTERM
into an exception, so its flow marks the MLflow run FAILED instead of being killed mid-run: inside
the training loop the stop waits for the next step and raises :class:`PeerError` from the loop's
own code; outside it, it raises :class:`LauncherStop` at once, wherever the signal landed.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import tempfile
import traceback
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from training.device import backend_for
from training.errors import SpecError, TrainingError

__all__ = [
    "PEER_EXIT",
    "STOPPED_BY_LAUNCHER",
    "LaunchError",
    "LauncherStop",
    "PeerError",
    "World",
    "as_rank_zero",
    "check_batch_size",
    "check_nproc",
    "current",
    "join",
    "launch",
    "launcher_stops",
    "leave",
    "rank_zero_first",
    "run_worker",
    "world_from_env",
]

#: Exit code of a process that stopped only because another training process failed; the
#: launcher never reports such a process as the cause.
PEER_EXIT = 3
#: Why rank 0 stopped when the launcher signalled it: the launcher does so when another
#: process failed, or when it was itself stopped (a cancelled job), and cannot say which.
STOPPED_BY_LAUNCHER = (
    "the launcher stopped training (another training process failed, or the launcher itself "
    "was stopped)"
)
#: The CLI's code for a user error (one red line), which a worker's SpecError/DataError keeps.
USER_ERROR_EXIT = 2


class PeerError(TrainingError):
    """Another training process failed (or the launcher stopped this one); the cause is theirs."""


class LauncherStop(BaseException):
    """The launcher stopped rank 0 outside the training loop (:data:`STOPPED_BY_LAUNCHER`).
    Raised from the SIGTERM handler wherever the signal lands, so, like
    ``KeyboardInterrupt``, it is not an ``Exception``: library code that wraps every exception it
    sees (MLflow's store session does) lets it through to the flow, which marks the run FAILED."""


class LaunchError(TrainingError):
    """A training process failed; ``exit_code`` is what the command should exit with and
    ``printed`` says that the failed process already showed the error itself (rank 0)."""

    def __init__(self, message: str, exit_code: int, printed: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.printed = printed


@dataclass(frozen=True)
class World:
    """This process's place among the training processes, as torchrun's environment says."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    backend: str = field(default_factory=backend_for)

    @property
    def device(self) -> torch.device:
        """``cuda:<local rank>`` under NCCL, the CPU under gloo."""
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def world_from_env(device: str | None = "auto") -> World | None:
    """The world torchrun (or any launcher setting its variables) put this process in; else None.

    ``device`` is the spec's device policy, which decides the backend (``backend_for``).
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    world_size = int(os.environ["WORLD_SIZE"])
    return World(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))),
        backend=backend_for(device),
    )


def _cpu_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def check_nproc(nproc: int | None, world: World | None = None, device: str | None = "auto") -> int:
    """The number of processes to start on this machine; a bad ``--nproc`` is a ``SpecError``.

    Under torchrun the processes already exist: ``--nproc`` may be left out, or must match
    torchrun's processes per node. Otherwise it must be at least 1, at most one per GPU when the
    run trains on CUDA (``device``; NCCL cannot share a GPU between ranks) and at most one per
    CPU core without.
    """
    if world is not None:
        if nproc is not None and nproc != world.local_world_size:
            raise SpecError(
                f"--nproc {nproc} but torchrun started {world.local_world_size} processes on this "
                "node; leave --nproc out under torchrun (its --nproc-per-node decides)"
            )
        return world.local_world_size
    if nproc is None:
        return 1
    if nproc < 1:
        raise SpecError(
            f"--nproc must be 1 or more (training processes on this machine: one per GPU, or "
            f"per CPU core without one), got {nproc}"
        )
    if nproc == 1:
        return 1
    if backend_for(device) == "nccl":
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise SpecError(
                f"--nproc {nproc} but this machine has {gpus} GPU(s): on GPUs each process "
                f"trains on its own GPU (NCCL); use --nproc {gpus}, or --device cpu to train on "
                "CPU cores with gloo"
            )
        return nproc
    cores = _cpu_cores()
    if nproc > cores:
        raise SpecError(
            f"--nproc {nproc} but this machine has {cores} CPU core(s) for training; more "
            f"processes than cores only slow each other down: use --nproc {cores} or fewer"
        )
    return nproc


def check_batch_size(batch_size: int, world_size: int) -> int:
    """The per-process batch size: every global batch split evenly, or a ``SpecError``.

    An even split keeps the spec's batch size (and so its learning rate) the global one, and on
    stateful text keeps each process on the same streams from chunk to chunk.
    """
    if batch_size % world_size:
        lower = max(world_size, batch_size - batch_size % world_size)
        raise SpecError(
            f"--batch-size {batch_size} cannot be split evenly over {world_size} training "
            f"processes (each takes batch-size / {world_size} samples of every batch); use a "
            f"multiple of {world_size}, e.g. {lower} or {lower + world_size}"
        )
    return batch_size // world_size


def join(world: World) -> None:
    """Join the process group (all processes block here until every one has joined)."""
    if world.backend == "nccl":
        if world.local_rank >= torch.cuda.device_count():
            raise SpecError(
                f"process {world.local_rank} on this node has no GPU of its own "
                f"({torch.cuda.device_count()} visible); start at most one process per GPU"
            )
        torch.cuda.set_device(world.device)
    dist.init_process_group(backend=world.backend, rank=world.rank, world_size=world.world_size)


def leave() -> None:
    """Leave the process group if this process joined one.

    Garbage is collected first: a finished DDP wrapper sits in reference cycles holding the
    group's gloo context, and freed only at interpreter exit it aborts the process ("terminate
    called without an active exception", SIGABRT) often enough that the launcher reported a
    finished rank as killed and stopped rank 0 mid-export."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def current() -> World | None:
    """The world this process trains in when it joined a process group; None when alone."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = world_from_env()
    rank, size = dist.get_rank(), dist.get_world_size()
    local_rank = world.local_rank if world is not None else 0
    local_size = world.local_world_size if world is not None else size
    return World(rank, size, local_rank, local_size, str(dist.get_backend()))


@contextlib.contextmanager
def collectives() -> Iterator[None]:
    """Around code that talks to the other processes (and around the whole training loop, whose
    steps do): a dead peer becomes :class:`PeerError`, and a stop the launcher asks for (SIGTERM
    on rank 0) waits for :func:`check_stop` or the block's end, where it raises from our own
    code rather than from inside whatever library call the signal interrupted (MLflow's
    session wraps any exception it sees into an ``MlflowException``). Blocks nest."""
    _STOP.deferring += 1
    try:
        yield
    except RuntimeError as exc:
        if not _is_transport_error(exc):
            raise
        _stopping()
        raise PeerError(f"another training process stopped: {_first_line(exc)}") from exc
    finally:
        _STOP.deferring -= 1
    check_stop()


def _is_transport_error(exc: RuntimeError) -> bool:
    """A peer gone or unreachable, not a bug in the step: c10d's own error types (NCCL, stores),
    or gloo's, which reach Python as a plain RuntimeError whose text starts with the gloo
    transport source file ("[.../gloo/transport/tcp/pair.cc:553] Connection closed by peer")."""
    return isinstance(exc, dist.DistError) or "gloo/transport/" in str(exc)


def check_stop() -> None:
    """Raise :class:`PeerError` when the launcher asked this process to stop (between steps)."""
    if _STOP.requested:
        _stopping()
        raise PeerError(STOPPED_BY_LAUNCHER)


@contextlib.contextmanager
def rank_zero_first(world: World | None) -> Iterator[None]:
    """Rank 0 runs the block first, the others after it (e.g. a first download into a cache)."""
    if world is None:
        yield
        return
    if world.rank != 0:
        with collectives():
            dist.barrier()
    yield
    if world.rank == 0:
        with collectives():
            dist.barrier()


# --------------------------------------------------------------------------------------------
# rank 0: a stop from the launcher becomes an exception the flow can clean up after


@dataclass
class _StopState:
    """The launcher's stop as rank 0 has seen it: asked for, under way, and how many
    :func:`collectives` blocks are open (inside one, the stop waits)."""

    requested: bool = False
    stopping: bool = False
    deferring: int = 0


_STOP = _StopState()


def _stopping() -> None:
    """A peer failed and this process is on its way out: from now on the launcher's SIGTERM
    (which follows within its monitor interval) must not interrupt the clean-up that marks the
    MLflow run FAILED; Prefect's own SIGTERM bridge would raise in the middle of it. The launcher
    still sends SIGKILL after its shutdown timeout."""
    _STOP.stopping = True
    with contextlib.suppress(ValueError):  # signals can only be set from the main thread
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Inside the training loop, ask it to stop at the next step or the loop's end (a collective
    in flight raises on its own); outside, raise now. Once a stop is under way, later signals
    wait for it."""
    if _STOP.stopping:
        return
    _STOP.requested = True
    if not _STOP.deferring:
        _stopping()
        raise LauncherStop(STOPPED_BY_LAUNCHER)


# --------------------------------------------------------------------------------------------
# ranks other than 0


def run_worker(world: World, spec: Any) -> int:
    """Train ``spec``'s shard on a rank other than 0 and return the process's exit code.

    No Prefect, no MLflow, no export: rank 0 records the run. User errors are not printed
    (rank 0 meets the same one and prints it; the launcher names it if not), bugs keep their
    traceback; both go to torchrun's error file for the launcher.
    """
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    from training.run import fit_spec

    try:
        check_batch_size(spec.resolved().batch_size, world.world_size)
        join(world)
        fit_spec(spec)
        return 0
    except PeerError:
        return PEER_EXIT
    except TrainingError as exc:
        ErrorHandler().record_exception(exc)
        return USER_ERROR_EXIT
    except Exception as exc:
        ErrorHandler().record_exception(exc)
        traceback.print_exc()
        return 1
    finally:
        leave()


@contextlib.contextmanager
def as_rank_zero(world: World) -> Iterator[None]:
    """Rank 0's block (the train flow): joined to the group, the launcher's SIGTERM turned into
    an exception (:func:`launcher_stops`) so the flow marks its MLflow run FAILED, the group
    left at the end."""
    join(world)
    try:
        with launcher_stops():
            yield
    finally:
        leave()


@contextlib.contextmanager
def launcher_stops() -> Iterator[None]:
    """While in a process group, the launcher's SIGTERM becomes :class:`PeerError` or
    :class:`LauncherStop` (see :func:`_on_sigterm`); alone, nothing changes.

    The train flow enters this again inside its own body: Prefect's flow engine installs its
    SIGTERM bridge (raising ``TerminationSignal``) for the flow's duration over the handler
    :func:`as_rank_zero` set, so a stop arriving before a collective noticed the dead peer
    would otherwise mark the run FAILED as a bare ``TerminationSignal``."""
    if current() is None:
        yield
        return
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        if not _STOP.stopping:  # once stopping, later signals stay ignored (_stopping)
            signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------------------------
# the launcher


def launch(nproc: int, command: Sequence[str]) -> None:
    """Run ``command`` (an executable and its arguments) in ``nproc`` processes on this machine
    under torch's elastic agent, as ``torchrun --standalone --nproc-per-node nproc`` would.

    Raises :class:`LaunchError` naming the process that failed first; returns when all
    succeeded. Each process gets ``cores / nproc`` threads unless ``OMP_NUM_THREADS`` is set.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cpu_cores() // nproc)))
    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # failures are reported below
    with tempfile.TemporaryDirectory(prefix="neuroserve-torchrun-") as logs:
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=nproc,
            run_id=str(uuid.uuid4()),
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",
            max_restarts=0,
            logs_specs=DefaultLogsSpecs(log_dir=logs),
        )
        try:
            elastic_launch(config, entrypoint=command[0])(*command[1:])
        except ChildFailedError as exc:
            raise _root_cause(exc, nproc) from None
        except SignalException as exc:
            raise LaunchError(
                f"training stopped by signal {exc.sigval.name}", 128 + int(exc.sigval)
            ) from None


def _root_cause(exc: Any, nproc: int) -> LaunchError:
    """The failure that caused the others: not a process that stopped because a peer did, nor
    one the launcher itself terminated (SIGTERM) once another had failed; then the earliest
    (timestamps are whole seconds, so they often tie), then the lowest rank."""
    failures = sorted(
        exc.failures.items(),
        key=lambda item: (
            item[1].exitcode == PEER_EXIT,
            item[1].exitcode == -signal.SIGTERM,
            item[1].timestamp,
            item[0],
        ),
    )
    rank, failure = failures[0]
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    code = failure.exitcode
    where = f"training process rank {rank} of {nproc}"
    if code == PEER_EXIT:
        return LaunchError(f"{where} stopped after another one failed", 1)
    if rank == 0 and code == USER_ERROR_EXIT:
        return LaunchError(f"{where} failed (its error is above)", code, printed=True)
    if code < 0:
        return LaunchError(f"{where} was killed: {message}", 1)
    if rank == 0:
        return LaunchError(f"{where} failed with exit code {code} (its traceback is above)", code)
    detail = message if message and "pytorch.org/docs" not in message else f"exit code {code}"
    return LaunchError(f"{where} failed: {detail}", USER_ERROR_EXIT if code == 2 else 1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
