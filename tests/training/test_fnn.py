"""The table FNN: averaged members, the linear path, per-member losses, spec overrides, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training import TrainSpec, export_onnx, train
from training.models import FNN, FNNConfig
from training.models.fnn import MemberView, categories_of
from training.plans import classifier_loss, mse
from training.plans.table import per_member


def _net(**config: object) -> FNN:
    torch.manual_seed(0)
    cfg = FNNConfig(4, 3, **config)  # type: ignore[arg-type]
    return FNN(cfg, np.full(4, 10.0, np.float32), np.full(4, 2.0, np.float32))


def test_output_is_the_average_of_the_members() -> None:
    net = _net(members=5, hidden=(8, 6), dropout=0.0).eval()
    x = torch.randn(7, 4) * 2 + 10
    per = MemberView(net)(x)
    assert per.shape == (5, 7, 3)
    torch.testing.assert_close(net(x), per.mean(dim=0))
    # members start different: averaging has something to average
    assert float((per[0] - per[1]).detach().abs().max()) > 1e-3


def test_linear_path_means_training_starts_from_a_linear_model() -> None:
    net = _net(members=3, linear_skip=True).eval()
    x = torch.randn(9, 4) * 2 + 10
    assert net.linear is not None
    expected = net.linear(net.standardise(x)).mean(dim=0)
    torch.testing.assert_close(net(x), expected)  # the MLP's last layer starts at zero
    plain = _net(members=3, linear_skip=False)
    assert plain.linear is None and float(plain(x).detach().abs().sum()) > 0


def test_standardisation_uses_training_statistics_and_clips() -> None:
    net = _net(clip=3.0)
    x = torch.tensor([[10.0, 12.0, 8.0, 1e6]])
    torch.testing.assert_close(net.standardise(x), torch.tensor([[0.0, 1.0, -1.0, 3.0]]))
    constant = FNN(FNNConfig(2, 1), np.zeros(2, np.float32), np.zeros(2, np.float32))
    assert torch.isfinite(constant(torch.ones(3, 2))).all()  # std 0 -> divide by 1, not NaN


def test_coded_categories_get_indicators_inside_the_graph(tmp_path: Path) -> None:
    x = np.array([[1, 0.5, 0], [2, 1.5, 1], [3, 2.5, 0], [1, 3.5, 1], [2, 4.5, 0]], np.float32)
    cats = categories_of(x, max_values=10)
    # column 0 (3 whole-number values) is coded; 1 is not whole, 2 is already a 0/1 column
    assert cats.columns.tolist() == [0, 0, 0] and cats.values.tolist() == [1, 2, 3]
    np.testing.assert_allclose(cats.rates, [0.4, 0.4, 0.2])
    assert len(categories_of(x, max_values=2).columns) == 0
    net = FNN(FNNConfig(3, 1, members=2), x.mean(0), x.std(0), cats)
    z = net.standardise(torch.tensor([[2.0, 1.0, 1.0], [9.0, 1.0, 1.0]]))
    assert z.shape == (2, 6) and net.n_inputs == 6
    ind = z[:, 3:] * net.cat_std + net.cat_mean
    torch.testing.assert_close(ind, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))  # 9 unseen

    rng = np.random.default_rng(0)
    region = rng.integers(1, 6, 300)
    y = np.array([0.0, 2.0, -1.0, 1.0, -2.0])[region - 1] + rng.normal(0, 0.1, 300)
    path = tmp_path / "regions.csv"
    path.write_text(
        "\n".join(
            [
                "region,noise,y",
                *(f"{r},{rng.normal():.4f},{t:.4f}" for r, t in zip(region, y, strict=True)),
            ]
        )
    )
    r = train(TrainSpec("fnn", str(path), target="y", epochs=5))
    assert r.test_metrics["r2"] > 0.95  # a linear model on the indicators already fits it
    report = export_onnx(r, tmp_path / "regions.onnx", {"model_name": "regions"})
    assert report.max_diff <= 1e-4


@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_each_member_trains_as_if_alone(task: str) -> None:
    """The per-member loss reports the members' mean, and each member's gradient is exactly the
    gradient its own loss would give it (not divided by the number of members)."""
    torch.manual_seed(1)
    base, k = (mse, 1) if task == "regression" else classifier_loss(task)
    n_out = k or 3
    z = torch.randn(4, 6, n_out, requires_grad=True)
    y = torch.randn(6) if task == "regression" else torch.randint(0, max(2, n_out), (6,))
    loss = per_member(base)(z, y)
    alone = [base(z[i], y) for i in range(4)]
    torch.testing.assert_close(loss, torch.stack(alone).mean())
    loss.backward()
    assert z.grad is not None
    (g0,) = torch.autograd.grad(base(z[0], y), z)
    torch.testing.assert_close(z.grad[0], g0[0])


def test_spec_sets_hidden_sizes_dropout_and_activation() -> None:
    r = train(TrainSpec("fnn", "wine", epochs=2, hidden=(16, 8, 4), dropout=0.0, activation="tanh"))
    assert r.architecture["hidden"] == (16, 8, 4) and r.architecture["dropout"] == 0.0
    assert r.architecture["activation"] == "tanh"
    layers = [m for m in r.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert layers == []
    widths = [p.shape[-1] for n, p in r.model.named_parameters() if n.endswith("net.0.weight")]
    assert widths == [16]
    defaults = train(TrainSpec("fnn", "wine", epochs=1)).architecture
    config = FNNConfig(13, 3)
    assert defaults["hidden"] == config.hidden and defaults["members"] == config.members


@pytest.mark.parametrize("name", ["diabetes", "breast-cancer", "wine"])
def test_plan_starts_from_a_frozen_linear_model_fitted_on_training_rows(name: str) -> None:
    from sklearn.linear_model import LogisticRegression, Ridge

    from training.data import load_dataset
    from training.plans import plan

    data = load_dataset(TrainSpec("fnn", name).resolved())
    p = plan(TrainSpec("fnn", name).resolved(), data)
    net = p.predictor.net
    assert isinstance(net, FNN) and net.linear is not None
    assert not net.linear.weight.requires_grad and not net.linear.bias.requires_grad
    trainable = [n for n, q in p.train_module.named_parameters() if q.requires_grad]
    assert trainable and not any("linear" in n for n in trainable)
    with torch.no_grad():
        start = p.predictor.eval()(torch.from_numpy(data.x_val)).numpy()  # MLP adds 0 yet
        z = net.standardise(torch.from_numpy(data.x_train)).numpy()
        z_val = net.standardise(torch.from_numpy(data.x_val)).numpy()
    if data.task == "regression":  # the same predictions as some ridge fit on training rows
        fits = [
            Ridge(alpha=a * len(z)).fit(z, data.y_train).predict(z_val)
            for a in (1e-4, 1e-3, 1e-2, 0.1, 1.0)
        ]
        assert min(float(np.abs(f - start[:, 0]).max()) for f in fits) < 1e-2 * data.y_val.std()
    else:
        fits = [
            LogisticRegression(C=c, max_iter=500).fit(z, data.y_train).predict_proba(z_val)
            for c in (0.01, 0.1, 1.0, 10.0, 100.0)
        ]
        assert min(float(np.abs(f - start).max()) for f in fits) < 1e-3


def _nonlinear_csv(path: Path, n: int = 600) -> Path:
    """A target no linear model can fit: y = sin(2a)·b + |c| with a nuisance column."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-2, 2, size=(n, 4))
    y = np.sin(2 * x[:, 0]) * x[:, 1] + np.abs(x[:, 2])
    lines = ["a,b,c,d,y"] + [
        f"{r[0]:.5f},{r[1]:.5f},{r[2]:.5f},{r[3]:.5f},{t:.5f}" for r, t in zip(x, y, strict=True)
    ]
    path.write_text("\n".join(lines))
    return path


def test_learns_a_nonlinear_target_a_linear_model_cannot(tmp_path: Path) -> None:
    path = _nonlinear_csv(tmp_path / "wave.csv")
    r = train(TrainSpec("fnn", str(path), target="y", epochs=150, patience=20, lr=3e-3))
    linear = r.baselines.get("ridge", r.baselines.get("linear-regression"))
    assert linear is not None and linear["r2"] < 0.3
    assert r.test_metrics["r2"] > 0.8


def test_ensemble_exports_with_parity(tmp_path: Path) -> None:
    r = train(TrainSpec("fnn", "wine", epochs=3))
    report = export_onnx(r, tmp_path / "wine.onnx", {"model_name": "wine-fnn"})
    assert report.max_diff <= 1e-4
    import onnxruntime as ort

    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": r.data.x_test[:5]})
    assert out.shape == (5, 3)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
