"""Tables: an ensemble FNN on standardised features; regression learns standardised targets.

The loop trains ``MemberView`` (every member's output, each scored by the task's loss, so the
members stay independent) while validation, early stopping and export see the ``FNN`` itself,
whose output is the members' average: the checkpoint kept is the one whose *average* is best
on validation.

The FNN's linear path starts as a regularised linear model (ridge for regression, logistic
regression for classes) whose strength is chosen on the validation split, and stays frozen:
the MLP learns only the part of the target the linear model misses, and early stopping on
validation stops it when that part is noise. On small, nearly linear tables (diabetes,
breast-cancer) this is what keeps the network from doing worse than the linear model; on a
noiseless linear target it fits exactly from the first epoch instead of crawling there at
Adam's step size.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from training.data import DataSplit
from training.models import FNN, FNNConfig, Predictor
from training.models.fnn import MemberView, categories_of
from training.plans import LossFn, Plan, classifier_loss, mse, overrides
from training.spec import TrainSpec

# Regularisation grids for the linear path, searched on validation (both are "strength"
# ladders: ridge alpha per training row, logistic C = inverse strength).
RIDGE_ALPHAS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 0.1, 1.0)
LOGISTIC_CS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
LINEAR_FIT_ROWS = 20_000  # a linear model needs far fewer rows than the net; keeps it cheap
SEED = 0


def per_member(loss: LossFn) -> LossFn:
    """Members' mean loss as the value, their summed loss as the gradient.

    ``z`` is ``[members, batch, k]`` against ``[batch]`` targets; folding members into the batch
    gives the mean of the members' own losses, which is what the logs should show. Its gradient,
    though, would reach each member divided by ``members``, and Adam's coupled weight decay
    would then weigh ``members`` times more than on a single net; scaling the gradient back
    makes every member train exactly as it would alone.
    """

    def member_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        members = z.shape[0]
        mean = loss(z.reshape(-1, z.shape[-1]), y.repeat(members))
        return mean * members - mean.detach() * (members - 1)

    return member_loss


def plan(spec: TrainSpec, data: DataSplit) -> Plan:
    """FNN with the training split's feature statistics inside the graph."""
    mean, std = data.x_train.mean(axis=0), data.x_train.std(axis=0)
    x = torch.from_numpy(data.x_train)
    arch = overrides(spec, hidden="hidden", dropout="dropout")
    n_features = data.x_train.shape[1]
    if data.task == "regression":
        y_mean, y_std = float(data.y_train.mean()), float(data.y_train.std() or 1.0)
        config = FNNConfig(n_features, 1, activation=spec.activation, **arch)
        net = FNN(config, mean, std, categories_of(data.x_train, config.max_categories))
        _init_linear(net, data, y_mean, y_std)
        y = torch.from_numpy((data.y_train - y_mean) / y_std).float()

        def val_loss(z: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
            return mse(z, (yv - y_mean) / y_std)

        predictor = Predictor(net, data.task, y_mean, y_std)
        return Plan(predictor, MemberView(net), per_member(mse), val_loss, x, y)
    loss, n_out = classifier_loss(data.task)
    config = FNNConfig(n_features, n_out or data.n_classes, activation=spec.activation, **arch)
    net = FNN(config, mean, std, categories_of(data.x_train, config.max_categories))
    _init_linear(net, data)
    y = torch.from_numpy(data.y_train)
    return Plan(Predictor(net, data.task), MemberView(net), per_member(loss), loss, x, y)


def _init_linear(net: FNN, data: DataSplit, y_mean: float = 0.0, y_std: float = 1.0) -> None:
    """Fit the linear path on the net's own standardised features; strength on validation."""
    if net.linear is None or len(np.unique(data.y_train)) < 2:
        return  # no linear path, or nothing a linear model could fit: the path trains freely
    with torch.no_grad():
        z_train = net.standardise(torch.from_numpy(data.x_train)).double().numpy()
        z_val = net.standardise(torch.from_numpy(data.x_val)).double().numpy()
    rows = np.arange(len(z_train))
    if len(rows) > LINEAR_FIT_ROWS:
        rows = np.sort(np.random.default_rng(SEED).choice(rows, LINEAR_FIT_ROWS, replace=False))
    if data.task == "regression":
        weight, bias = _ridge(
            z_train[rows],
            (data.y_train[rows] - y_mean) / y_std,
            z_val,
            (data.y_val - y_mean) / y_std,
        )
    else:
        weight, bias = _logistic(z_train[rows], data.y_train[rows], z_val, data.y_val, data)
    net.set_linear(weight, bias, trainable=False)


def _ridge(
    z: np.ndarray, y: np.ndarray, z_val: np.ndarray, y_val: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge with an unpenalised intercept; alpha by validation MSE."""
    zm, ym = z.mean(axis=0), float(y.mean())
    zc, yc = z - zm, y - ym
    gram, rhs = zc.T @ zc, zc.T @ yc
    best: tuple[float, np.ndarray, float] | None = None
    for alpha in RIDGE_ALPHAS:
        w = np.linalg.solve(gram + alpha * len(z) * np.eye(len(gram)), rhs)
        b = ym - float(zm @ w)
        err = float(np.mean((z_val @ w + b - y_val) ** 2)) if len(y_val) else 0.0
        if best is None or err < best[0]:
            best = (err, w, b)
    assert best is not None
    return best[1][:, None], np.array([best[2]])


def _logistic(
    z: np.ndarray, y: np.ndarray, z_val: np.ndarray, y_val: np.ndarray, data: DataSplit
) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression (multinomial for >2 classes); C by validation log-loss.

    Returns logits weights in the net's layout: one column for binary (the positive class's
    logit), one per class otherwise; a class absent from the training rows gets a very low bias.
    """
    from sklearn.linear_model import LogisticRegression

    k = 1 if data.task == "binary" else data.n_classes
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for c in LOGISTIC_CS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings at weak regularisation
            model = LogisticRegression(C=c, max_iter=500).fit(z, y)
        classes = model.classes_.astype(np.int64)
        weight = np.zeros((z.shape[1], k))
        bias = np.zeros(k) if k == 1 else np.full(k, -30.0)
        if k == 1:
            weight[:, 0], bias[0] = model.coef_[0], model.intercept_[0]
        else:
            coef = model.coef_ if len(classes) > 2 else np.vstack([-model.coef_, model.coef_]) / 2
            icpt = (
                model.intercept_
                if len(classes) > 2
                else np.array([-model.intercept_[0], model.intercept_[0]]) / 2
            )
            weight[:, classes], bias[classes] = coef.T, icpt
        score = _log_loss(z_val @ weight + bias, y_val, k) if len(y_val) else 0.0
        if best is None or score < best[0]:
            best = (score, weight, bias)
    assert best is not None
    return best[1], best[2]


def _log_loss(logits: np.ndarray, y: np.ndarray, k: int) -> float:
    """Mean cross-entropy of logits (one column = binary positive-class logit)."""
    if k == 1:
        return float(np.mean(np.logaddexp(0.0, logits[:, 0]) - y * logits[:, 0]))
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-np.mean(logp[np.arange(len(y)), y]))
