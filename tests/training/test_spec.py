"""TrainSpec: validation messages, defaults, and the JSON round trip pipelines/ relies on."""

from __future__ import annotations

import json

import pytest

from training import SpecError, TrainSpec, load_dataset, train
from training.spec import FIELD_INPUTS, parse_sizes


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "transformer"}, "unknown model kind 'transformer'; expected one of: fnn, cnn"),
        ({"lr": -0.1}, "lr must be a positive number"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"epochs": 0}, "epochs must be a positive integer; got 0"),
        ({"batch_size": -4}, "batch_size must be a positive integer; got -4"),
        (
            {"optimizer": "adagrad"},
            "unknown optimizer 'adagrad'; expected one of: adam, adamw, sgd",
        ),
        ({"activation": "gelu"}, "unknown activation 'gelu'; expected one of: relu, leaky_relu"),
        ({"patience": 0}, "patience must be a positive integer"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"window": 1}, "window must be at least 2"),
        ({"limit": 5}, "limit must be at least 20"),
        ({"data": ""}, "data is empty; expected a built-in data set"),
        ({"kind": "cnn"}, "kind 'cnn' cannot train on 'diabetes' (table data); use fnn"),
        ({"hidden": (8, 0)}, "hidden must be one or more positive layer sizes, e.g. 32,64"),
        ({"hidden": ()}, "hidden must be one or more positive layer sizes"),
        (
            {"conv": (0, 64)},
            "conv must be one or more positive layer sizes, e.g. 32,64; got (0, 64)",
        ),
        ({"dense": (32, True)}, "dense must be one or more positive layer sizes"),
        ({"dropout": 1.5}, "dropout must be in [0, 1), e.g. 0.2; got 1.5"),
        ({"dropout": 1.0}, "dropout must be in [0, 1)"),
        ({"dropout": -0.1}, "dropout must be a number >= 0"),
        ({"pool": "sum"}, "unknown pool 'sum'; expected one of: max, avg, none"),
        ({"schedule": "step"}, "unknown schedule 'step'; expected one of: constant, cosine"),
        ({"weight_decay": -1.0}, "weight_decay must be a number >= 0"),
        ({"weight_decay": float("inf")}, "weight_decay must be a number >= 0"),
        ({"kernel": 0}, "kernel must be a positive integer; got 0"),
        ({"embed": 0}, "embed must be a positive integer; got 0"),
        ({"batch_norm": "yes"}, "batch_norm must be true or false; got 'yes'"),
        ({"tied": 1}, "tied must be true or false; got 1"),
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


def test_round_trip_keeps_architecture_fields() -> None:
    specs = [
        TrainSpec(
            "cnn",
            "digits",
            conv=(8, 16),
            dense=(32,),
            kernel=3,
            pool="none",
            batch_norm=False,
            augment=True,
            dropout=0.1,
            weight_decay=0.01,
            schedule="cosine",
            optimizer="adamw",
        ),
        TrainSpec("gru", "pydoc-text", hidden=(64, 32), embed=48, tied=True, dropout=0.0),
        TrainSpec("fnn", "wine", hidden=(16,), schedule="plateau"),
    ]
    for spec in specs:
        resolved = spec.resolved()
        as_json = json.loads(json.dumps(resolved.to_dict()))
        assert TrainSpec.from_dict(as_json) == resolved
        for name in ("hidden", "conv", "dense"):
            value = as_json[name]
            assert value is None or isinstance(value, list), (name, value)


#: A model and data set of each input kind, for fields that shape only some kinds.
_SHAPED_BY = {"image": ("cnn", "digits"), "table": ("fnn", "wine"), "text": ("lstm", "pydoc-text")}


@pytest.mark.parametrize(
    ("field", "text", "value"),
    [
        ("hidden", "64x64", (64, 64)),
        ("hidden", "32, 64", (32, 64)),
        ("hidden", [32, 64], (32, 64)),
        ("hidden", 8, (8,)),
        ("hidden", "none", None),
        ("conv", "32,64", (32, 64)),
        ("dense", "128", (128,)),
        ("dropout", "0.25", 0.25),
        ("weight_decay", "0", 0.0),
        ("kernel", "5", 5),
        ("batch_norm", "false", False),
        ("augment", "yes", True),
        ("tied", "on", True),
        ("pointer", "off", False),
        ("pool", "none", "none"),  # a choice named none: no pooling, not the default
        ("schedule", "cosine", "cosine"),
        ("schedule", "none", None),
    ],
)
def test_from_dict_coerces_architecture_text(field: str, text: object, value: object) -> None:
    kind, data = _SHAPED_BY[FIELD_INPUTS.get(field, ("image",))[0]]
    spec = TrainSpec.from_dict({"kind": kind, "data": data, field: text})
    assert getattr(spec, field) == value
    assert type(getattr(spec, field)) is type(value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"conv": "32,abc"}, "conv must be layer sizes separated by commas, e.g. 32,64"),
        ({"hidden": "8,0"}, "hidden must be one or more positive layer sizes"),
        ({"dense": [2.5]}, "dense must be layer sizes separated by commas"),
        ({"batch_norm": "maybe"}, "batch_norm must be true or false; got 'maybe'"),
        ({"dropout": "lots"}, "dropout must be a number; got 'lots'"),
        ({"kernel": "3.5"}, "kernel must be an integer; got '3.5'"),
        ({"pool": "Max"}, "unknown pool 'Max'"),
    ],
)
def test_from_dict_rejects_bad_architecture_text(changes: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError) as err:
        TrainSpec.from_dict({"kind": "cnn", "data": "digits", **changes})
    assert message in str(err.value)


@pytest.mark.parametrize("bad", ["32,abc", "", ",", [True], [2.5], [], None, "1e3x"])
def test_parse_sizes_names_what_it_was_given(bad: object) -> None:
    with pytest.raises(SpecError, match=r"^--conv must be layer sizes separated by commas"):
        parse_sizes("--conv", bad)
    assert parse_sizes("--conv", "16x32,64") == (16, 32, 64)


def test_spec_is_frozen() -> None:
    spec = TrainSpec("fnn", "wine")
    with pytest.raises(AttributeError):
        spec.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kind", "data", "changes", "message"),
    [
        ("fnn", "diabetes", {"conv": (32,)}, "conv does not apply to fnn on table data"),
        ("lstm", "sunspots", {"tied": True}, "tied does not apply to lstm on series data"),
        ("cnn", "digits", {"hidden": (8,)}, "hidden does not apply to cnn on image data"),
        ("gru", "co2", {"embed": 32}, "embed does not apply to gru on series data"),
    ],
)
def test_architecture_field_of_another_family_is_rejected(
    kind: str, data: str, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        TrainSpec(kind, data, **changes).validate()  # type: ignore[arg-type]
    TrainSpec(kind, data).validate()  # the same spec without it is fine
