"""Training-loop overhead: ``training.loop.fit`` against a plain hand-written torch loop.

    .venv/bin/python bench/bench_training.py [--scale 1.0] [--repeat 5]

Same model class, same initial weights, same data, same batch size, same optimiser, same
shuffling, in the same process. Both sides do the same work per epoch: every training batch
(forward, backward, step) plus one validation-loss pass, because a real loop has to validate to
early-stop. ``fit`` additionally runs its callbacks (early stopping), tracks the best checkpoint
and times epochs; that bookkeeping is what the ratio measures.

Runs are interleaved (hand, loop, hand, loop, ...) and the best of ``--repeat`` is kept, so a
burst of load from other processes on a shared machine hurts both sides alike. The goal is
loop/hand >= 0.95 samples/s. Each case runs enough epochs to take about a second (``--scale``
multiplies them), so timer noise does not dominate the tiny models.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import TrainSpec, load_dataset
from training.callbacks import EarlyStopping
from training.loop import LoopConfig, fit, make_optimizer
from training.plans import plan as make_plan

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# name, model, loss, (x, y, x_val, y_val), batch size, epochs per timed run, grad clip
Case = tuple[str, nn.Module, Loss, tuple[torch.Tensor, ...], int, int, float | None]


def _case(kind: str, data: str, label: str, epochs: int) -> Case:
    """The default network of ``train(TrainSpec(kind, data))``, built by the same plan."""
    spec = TrainSpec(kind, data).resolved()
    assert spec.batch_size is not None
    d = load_dataset(spec)
    p = make_plan(spec, d)
    net = p.predictor.net
    tensors = (p.x, p.y, torch.from_numpy(d.x_val), torch.from_numpy(d.y_val))

    class _Train(nn.Module):
        """Training view (``p.train_module``) whose eval-mode output is the network's own."""

        def __init__(self) -> None:
            super().__init__()
            self.train_view, self.net = p.train_module, net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.train_view(x) if self.training else self.net(x)

    def loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # validation targets are raw; training targets are what the plan prepared
        return p.val_loss_fn(z, y) if not torch.is_grad_enabled() else p.loss_fn(z, y)

    return label, _Train(), loss, tensors, spec.batch_size, epochs, p.grad_clip


def _case_cnn() -> Case:
    return _case("cnn", "mnist", "cnn / mnist (3,500 images)", 2)


def _case_fnn() -> Case:
    return _case("fnn", "breast-cancer", "fnn / breast-cancer (364 rows)", 60)


def _case_lstm() -> Case:
    return _case("lstm", "sunspots", "lstm / sunspots (200 windows)", 10)


def hand_loop(
    model: nn.Module,
    loss_fn: Loss,
    data: tuple[torch.Tensor, ...],
    batch_size: int,
    epochs: int,
    grad_clip: float | None,
) -> float:
    """The loop one writes by hand: shuffle, step, validate; returns seconds."""
    x, y, xv, yv = data
    opt = make_optimizer("adam", model.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)
    n = len(x)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])  # grad enabled: the training loss
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
        model.eval()
        with torch.no_grad():
            float(loss_fn(model(xv), yv))
    return time.perf_counter() - start


def loop_fit(
    model: nn.Module,
    loss_fn: Loss,
    data: tuple[torch.Tensor, ...],
    batch_size: int,
    epochs: int,
    grad_clip: float | None,
) -> float:
    """The same work through ``training.loop.fit`` with early stopping attached."""
    x, y, xv, yv = data

    def validate(m: nn.Module) -> dict[str, float]:
        return {"val_loss": float(loss_fn(m(xv), yv))}

    config = LoopConfig(epochs=epochs, batch_size=batch_size, lr=1e-3, seed=0, grad_clip=grad_clip)
    start = time.perf_counter()
    fit(
        model,
        loss_fn,
        x,
        y,
        validate=validate,
        config=config,
        callbacks=[EarlyStopping("val_loss", higher_is_better=False, patience=epochs + 1)],
    )
    return time.perf_counter() - start


def main() -> None:
    """Run every case, interleaved, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every case's epochs")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    console = Console(width=150)
    table = Table(
        title=f"training loop vs hand-written torch loop ({torch.get_num_threads()} threads)"
    )
    columns = ("model / data", "epochs", "samples", "hand samples/s", "loop samples/s", "ratio")
    for col in (*columns, "median pair"):
        table.add_column(col, justify="left" if col == "model / data" else "right")
    for make in (_case_cnn, _case_fnn, _case_lstm):
        name, net, loss_fn, data, batch, base_epochs, clip = make()
        epochs = max(1, round(base_epochs * args.scale))
        init = copy.deepcopy(net.state_dict())
        hand_times: list[float] = []
        loop_times: list[float] = []
        for rep in range(args.repeat):
            # alternate who goes first, so a load burst does not always hit the same side
            order = (hand_loop, loop_fit) if rep % 2 == 0 else (loop_fit, hand_loop)
            for runner in order:
                torch.manual_seed(0)
                net.load_state_dict(init)
                seconds = runner(net, loss_fn, data, batch, epochs, clip)
                (hand_times if runner is hand_loop else loop_times).append(seconds)
        samples = len(data[0]) * epochs
        hand_best, loop_best = min(hand_times), min(loop_times)
        ratio = hand_best / loop_best
        pairs = [h / lp for h, lp in zip(hand_times, loop_times, strict=True)]
        table.add_row(
            name,
            str(epochs),
            f"{samples:,}",
            f"{samples / hand_best:,.0f}",
            f"{samples / loop_best:,.0f}",
            f"[{'green' if ratio >= 0.95 else 'red'}]{ratio:.3f}",
            f"{statistics.median(pairs):.3f}",
        )
        console.print(f"done: {name}", style="dim")
    console.print(table)
    console.print(
        "ratio = best loop samples/s / best hand-written samples/s (goal >= 0.95), best of "
        f"{args.repeat} interleaved runs per side, alternating who goes first; median pair = "
        "median ratio over back-to-back pairs. The CPU is shared with other work, so absolute "
        "samples/s vary from run to run."
    )


if __name__ == "__main__":
    main()
