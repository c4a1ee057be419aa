"""Feed-forward network for tables: an averaged ensemble of MLPs, each beside a linear path.

Why this shape (measured on the built-in tables, seeds 42/1/2, choices made on validation):

* a **linear skip path** (``output = linear(x) + MLP(x)``, the MLP's last layer starting at
  zero): the table plan fills the linear path with a regularised linear model fitted on the
  training split (strength chosen on validation) and freezes it, so the network starts as that
  linear model and the MLP learns only what it misses. Small tables such as diabetes are
  nearly linear, and a plain MLP lost to ridge on some splits; a noiseless linear target is
  fitted exactly from the first epoch instead of crawling there at Adam's step size;
* **several members trained at once and averaged** (a deep ensemble): on a few hundred rows a
  single net's test score swings by several points with its initial weights, and averaging
  independently started nets is the standard way to steady it. The members are stored as
  stacked weight tensors (``[members, in, out]``), so one batched matmul trains them all for
  about the price of one net, and the exported graph is still one input, one output;
* **standardisation inside the graph** from training statistics, so the ONNX graph takes raw
  features (docs/contracts.md); standardised values are clipped to ``±clip`` so one extreme
  value in a heavy-tailed column cannot push a ReLU net far outside anything it saw;
* **indicators for coded categories**: a column holding only a few whole numbers (a region
  code, a 1-5 answer) also gets one 0/1 input per value seen in training, so neither the
  linear path nor the MLP has to treat "region 4" as twice "region 2". Survey tables are full
  of such columns; a value never seen in training simply lights no indicator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["FNN", "Categories", "FNNConfig", "categories_of", "make_activation"]


@dataclass
class FNNConfig:
    """Shape of the network; ``n_outputs`` is 1 for regression and binary, k for k classes.

    ``members``: nets trained side by side and averaged (1 = a single MLP). ``linear_skip``:
    add a linear path from the inputs to the outputs. ``clip``: bound on standardised inputs
    (0 = no bound). ``max_categories``: a column of whole numbers with 3 up to this many
    distinct training values also gets one indicator input per value (0 = never).
    """

    n_features: int
    n_outputs: int
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    dropout: float = 0.1
    members: int = 8
    linear_skip: bool = True
    clip: float = 5.0
    max_categories: int = 10


def make_activation(name: str) -> nn.Module:
    """The activation layer for a name from ``training.spec.ACTIVATIONS``."""
    table: dict[str, type[nn.Module]] = {
        "relu": nn.ReLU,
        "leaky_relu": nn.LeakyReLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
    }
    return table[name]()


@dataclass(frozen=True)
class Categories:
    """Indicator inputs: input ``columns[i] == values[i]``, seen with training rate ``rates[i]``."""

    columns: np.ndarray
    values: np.ndarray
    rates: np.ndarray


def categories_of(x: np.ndarray, max_values: int) -> Categories:
    """The coded-category columns of a training matrix and their values.

    Two-valued columns are left alone: standardised, they already are an indicator.
    """
    columns: list[int] = []
    values: list[float] = []
    rates: list[float] = []
    for j in range(x.shape[1]):
        col = x[:, j]
        if max_values < 3 or not np.all(col == np.round(col)):
            continue
        uniques, counts = np.unique(col, return_counts=True)
        if 3 <= len(uniques) <= max_values:
            columns += [j] * len(uniques)
            values += uniques.tolist()
            rates += (counts / len(col)).tolist()
    return Categories(
        np.asarray(columns, np.int64), np.asarray(values, np.float32), np.asarray(rates)
    )


class MemberLinear(nn.Module):
    """``members`` independent linear layers applied at once: ``[m, b, in] -> [m, b, out]``.

    A 2-D input ``[b, in]`` is shared by every member (the first layer). Initialised like
    ``nn.Linear`` (uniform in ±1/sqrt(fan_in)) unless ``zero`` asks for all zeros.
    """

    def __init__(self, members: int, n_in: int, n_out: int, *, zero: bool = False) -> None:
        super().__init__()
        bound = 0.0 if zero else 1.0 / math.sqrt(n_in)
        self.weight = nn.Parameter(torch.empty(members, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, n_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Broadcast matmul: exports to one ONNX MatMul + Add."""
        return torch.matmul(x, self.weight) + self.bias


class FNN(nn.Module):
    """Standardise raw features, run every member, average the members' logits / values."""

    mean: torch.Tensor
    std: torch.Tensor
    cat_columns: torch.Tensor
    cat_values: torch.Tensor
    cat_mean: torch.Tensor
    cat_std: torch.Tensor

    def __init__(
        self,
        config: FNNConfig,
        mean: np.ndarray,
        std: np.ndarray,
        categories: Categories | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        # A constant feature has std 0; dividing by 1 keeps it at 0 instead of NaN.
        safe_std = np.where(std > 1e-12, std, 1.0)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1))
        self.register_buffer("std", torch.as_tensor(safe_std, dtype=torch.float32).reshape(1, -1))
        cats = categories or Categories(np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
        rates = np.asarray(cats.rates, np.float64)
        self.register_buffer("cat_columns", torch.as_tensor(cats.columns, dtype=torch.int64))
        self.register_buffer("cat_values", torch.as_tensor(cats.values, dtype=torch.float32))
        self.register_buffer("cat_mean", torch.as_tensor(rates, dtype=torch.float32))
        self.register_buffer(
            "cat_std",
            torch.as_tensor(np.sqrt(np.maximum(rates * (1 - rates), 1e-4)), dtype=torch.float32),
        )
        self.n_inputs = config.n_features + len(cats.columns)
        m = config.members
        layers: list[nn.Module] = []
        width = self.n_inputs
        for h in config.hidden:
            layers += [MemberLinear(m, width, h), make_activation(config.activation)]
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = h
        # With a linear path the MLP starts at zero, so training starts from a linear model.
        layers.append(MemberLinear(m, width, config.n_outputs, zero=config.linear_skip))
        self.net = nn.Sequential(*layers)
        self.linear = (
            MemberLinear(m, self.n_inputs, config.n_outputs) if config.linear_skip else None
        )

    def set_linear(self, weight: np.ndarray, bias: np.ndarray, *, trainable: bool) -> None:
        """Give every member's linear path these weights (``[n_inputs, n_outputs]``).

        The table plan puts a linear model fitted and regularised on validation here and
        freezes it, so the MLP learns only what the linear model leaves over.
        """
        if self.linear is None:
            raise ValueError("this FNN has no linear path (linear_skip=False)")
        with torch.no_grad():
            self.linear.weight.copy_(
                torch.as_tensor(weight, dtype=torch.float32).expand_as(self.linear.weight)
            )
            self.linear.bias.copy_(
                torch.as_tensor(bias, dtype=torch.float32).expand_as(self.linear.bias)
            )
        self.linear.requires_grad_(trainable)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """Raw features -> standardised (and clipped) features, then standardised indicators."""
        z = (x - self.mean) / self.std
        if self.config.clip > 0:
            z = z.clamp(-self.config.clip, self.config.clip)
        if self.cat_columns.numel() == 0:
            return z
        hits = (x[:, self.cat_columns] == self.cat_values).to(z.dtype)
        return torch.cat([z, (hits - self.cat_mean) / self.cat_std], dim=1)

    def members(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, n_features]`` raw -> ``[members, batch, n_outputs]``, one slice per net."""
        z = self.standardise(x)
        out = self.net(z)
        if self.linear is not None:
            out = out + self.linear(z)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, n_features]`` raw -> ``[batch, n_outputs]`` averaged logits or values."""
        return self.members(x).mean(dim=0)


class MemberView(nn.Module):
    """The module the loop trains: every member's output, so each member gets its own loss.

    Training each member on its own loss (rather than the average's) keeps them independent,
    which is what makes averaging them pay; it shares the ``FNN``'s parameters.
    """

    def __init__(self, fnn: FNN) -> None:
        super().__init__()
        self.fnn = fnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, n_features]`` -> ``[members, batch, n_outputs]``."""
        return self.fnn.members(x)
