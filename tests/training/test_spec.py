"""TrainSpec: validation messages, defaults, and the JSON round trip pipelines/ relies on."""

from __future__ import annotations

import json

import pytest

from training import SpecError, TrainSpec, load_dataset, train


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "transformer"}, "unknown model kind 'transformer'; expected one of: fnn, cnn"),
        ({"lr": -0.1}, "lr must be a positive number"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"epochs": 0}, "epochs must be a positive integer; got 0"),
        ({"batch_size": -4}, "batch_size must be a positive integer; got -4"),
        ({"optimizer": "adagrad"}, "unknown optimizer 'adagrad'; expected one of: adam, adamw, sgd"),
        ({"activation": "gelu"}, "unknown activation 'gelu'; expected one of: relu, leaky_relu"),
        ({"patience": 0}, "patience must be a positive integer"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"window": 1}, "window must be at least 2"),
        ({"limit": 5}, "limit must be at least 20"),
        ({"data": ""}, "data is empty; expected a built-in data set"),
        ({"kind": "cnn"}, "kind 'cnn' cannot train on 'diabetes' (table data); use fnn"),
    ],
)
def test_bad_spec_raises_clear_message(changes: dict[str, object], message: str) -> None:
    spec = TrainSpec(**{"kind": "fnn", "data": "diabetes", **changes})  # type: ignore[arg-type]
    with pytest.raises(SpecError) as err:
        spec.validate()
    assert message in str(err.value)


def test_train_rejects_bad_spec_before_loading_data() -> None:
    with pytest.raises(SpecError, match="unknown optimizer 'adagrad'"):
        train(TrainSpec("fnn", "breast-cancer", optimizer="adagrad"))


def test_unknown_dataset_name_is_a_data_error() -> None:
    from training import DataError

    with pytest.raises(DataError, match="'no-such-set' is neither a built-in data set"):
        load_dataset("no-such-set", kind="fnn")


def test_resolved_fills_defaults_per_kind_and_data() -> None:
    r = TrainSpec("cnn", "mnist").resolved()
    assert (r.epochs, r.lr, r.batch_size, r.window) == (30, 1e-3, 64, None)
    s = TrainSpec("gru", "sunspots").resolved()
    assert s.window == 20 and s.epochs is not None and s.lr is not None
    t = TrainSpec("lstm", "pydoc-text").resolved()
    assert t.window == 32
    assert TrainSpec("lstm", "co2").resolved().window == 52
    # explicit values win over defaults
    assert TrainSpec("fnn", "wine", epochs=3, lr=0.5).resolved().epochs == 3
    # tables have no window, even if one is given
    assert TrainSpec("fnn", "wine", window=5).resolved().window is None


def test_round_trip_through_json() -> None:
    spec = TrainSpec("lstm", "sunspots", lr=0.01, window=12, seed=7).resolved()
    again = TrainSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


def test_from_dict_coerces_text_and_rejects_unknown_keys() -> None:
    spec = TrainSpec.from_dict({"kind": "fnn", "data": "wine", "lr": "0.01", "epochs": "4"})
    assert spec.lr == 0.01 and spec.epochs == 4
    with pytest.raises(SpecError, match="unknown spec field\\(s\\): colour"):
        TrainSpec.from_dict({"kind": "fnn", "data": "wine", "colour": "red"})
    with pytest.raises(SpecError, match="epochs must be an integer; got 'many'"):
        TrainSpec.from_dict({"kind": "fnn", "data": "wine", "epochs": "many"})
    with pytest.raises(SpecError, match="missing 'data'"):
        TrainSpec.from_dict({"kind": "fnn"})


def test_spec_is_frozen() -> None:
    spec = TrainSpec("fnn", "wine")
    with pytest.raises(AttributeError):
        spec.lr = 1.0  # type: ignore[misc]
