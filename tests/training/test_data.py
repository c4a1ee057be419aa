"""Data sets: shapes and dtypes per the contract, deterministic splits, user files, bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import BUILTIN_DATASETS, DataError, TrainSpec, load_dataset, train
from training.data import UNK_TOKEN, tokenize


def test_builtin_names() -> None:
    assert set(BUILTIN_DATASETS) == {
        "mnist", "digits", "diabetes", "breast-cancer", "wine", "sunspots", "co2", "pydoc-text",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("name", "kind", "task", "x_shape", "x_dtype"),
    [
        ("mnist", "cnn", "multiclass", (1, 28, 28), np.float32),
        ("digits", "cnn", "multiclass", (1, 8, 8), np.float32),
        ("diabetes", "fnn", "regression", (10,), np.float32),
        ("breast-cancer", "fnn", "binary", (30,), np.float32),
        ("wine", "fnn", "multiclass", (13,), np.float32),
        ("sunspots", "lstm", "forecast", (20, 1), np.float32),
        ("co2", "gru", "forecast", (52, 1), np.float32),
        ("pydoc-text", "lstm", "next-token", (32,), np.int64),
    ],
)
def test_builtin_shapes_follow_contract(
    name: str, kind: str, task: str, x_shape: tuple[int, ...], x_dtype: type
) -> None:
    d = load_dataset(TrainSpec(kind, name))
    assert d.task == task
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val), (d.x_test, d.y_test)):
        assert x.shape[1:] == x_shape and x.dtype == x_dtype
        assert y.ndim == 1 and len(y) == len(x) > 0
        assert np.isfinite(x.astype(np.float64)).all()
    assert len(d.sha256) == 64


def test_raw_pixel_ranges() -> None:
    mnist = load_dataset("mnist", kind="cnn", limit=300)
    assert mnist.x_train.max() > 200 and mnist.x_train.min() == 0 and mnist.pixel_max == 255
    digits = load_dataset("digits", kind="cnn")
    assert digits.x_train.max() == 16 and digits.pixel_max == 16
    assert digits.sizes() == {"train": 1258, "val": 180, "test": 359}


def test_split_is_deterministic_and_seed_dependent() -> None:
    a = load_dataset("wine", kind="fnn", seed=3)
    b = load_dataset("wine", kind="fnn", seed=3)
    c = load_dataset("wine", kind="fnn", seed=4)
    assert np.array_equal(a.x_test, b.x_test) and a.sha256 == b.sha256
    assert not np.array_equal(a.x_test, c.x_test)
    # disjoint, complete partition of the samples
    rows = np.concatenate([a.x_train, a.x_val, a.x_test])
    assert len(np.unique(rows, axis=0)) == 178


def test_classifier_split_is_stratified() -> None:
    d = load_dataset("mnist", kind="cnn")
    assert d.sizes() == {"train": 3500, "val": 500, "test": 1000}
    assert set(np.bincount(d.y_test)) == {100}


def test_series_split_is_chronological_without_leakage() -> None:
    d = load_dataset("sunspots", kind="lstm", window=10)
    # Every window ends just before its target: the target is the next value.
    assert np.array_equal(d.x_train[1:, -1, 0], d.y_train[:-1])
    # Targets run forward in time across splits: train, then val, then test.
    series = np.concatenate([d.x_train[0, :, 0], d.y_train, d.y_val, d.y_test])
    assert len(series) == 309
    # No training window contains a validation or test target.
    assert d.x_train.shape[0] + 10 + len(d.y_val) + len(d.y_test) == 309
    last_train_input = d.x_train[-1, -1, 0]
    assert last_train_input == d.y_train[-2]


def test_co2_nans_are_interpolated() -> None:
    d = load_dataset("co2", kind="lstm", window=52)
    assert np.isfinite(d.x_train).all() and np.isfinite(d.y_test).all()


def test_text_vocabulary_and_unknown_token() -> None:
    d = load_dataset("pydoc-text", kind="lstm", window=8, limit=3000)
    assert d.vocabulary[0] == UNK_TOKEN and d.unk_token == UNK_TOKEN
    assert len(set(d.vocabulary)) == len(d.vocabulary)
    assert d.x_train.max() < len(d.vocabulary)
    assert tokenize("Hello, World! It's 2024.") == ["hello", "world", "it's", "2024"]
    assert d.labels == d.vocabulary


# ------------------------------------------------------------------------- user files


def test_csv_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    path = tmp_path / "houses.csv"
    lines = ["a,b,c,price"] + [f"{r[0]},{r[1]},{r[2]},{r.sum() * 10 + 3}" for r in x]
    path.write_text("\n".join(lines))
    d = load_dataset(str(path), kind="fnn", target="price")
    assert d.task == "regression" and d.feature_names == ["a", "b", "c"]
    assert d.target == "price" and sum(d.sizes().values()) == 120
    result = train(TrainSpec("fnn", str(path), target="price", epochs=30, lr=0.01))
    assert result.test_metrics["r2"] > 0.99  # noiseless and linear: anything less is a bug


def test_csv_table_classification_with_text_labels(tmp_path: Path) -> None:
    path = tmp_path / "pets.csv"
    rows = ["weight,height,label"] + [
        f"{i % 7},{i % 5},{'cat' if i % 2 else 'dog'}" for i in range(60)
    ]
    path.write_text("\n".join(rows))
    d = load_dataset(str(path), kind="fnn", target="label")
    assert d.task == "binary" and d.labels == ["cat", "dog"]


def test_csv_series(tmp_path: Path) -> None:
    path = tmp_path / "sales.csv"
    values = 10 + np.sin(np.arange(200) / 5)
    path.write_text("day,sales\n" + "\n".join(f"d{i},{v}" for i, v in enumerate(values)))
    d = load_dataset(str(path), kind="gru", window=12)
    assert d.task == "forecast" and d.x_train.shape[1:] == (12, 1)
    assert d.y_test[-1] == pytest.approx(values[-1], rel=1e-6)


def _write_images(root: Path, size: tuple[int, int], mode: str = "L") -> None:
    rng = np.random.default_rng(1)
    for cls, base in (("circle", 40), ("square", 200)):
        (root / cls).mkdir(parents=True)
        for i in range(12):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            arr = np.clip(base + rng.normal(0, 10, shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr, mode=mode).save(root / cls / f"{i}.png")


def test_image_folder_grayscale_and_rgb(tmp_path: Path) -> None:
    _write_images(tmp_path / "grey", (10, 12))
    d = load_dataset(str(tmp_path / "grey"), kind="cnn")
    assert d.labels == ["circle", "square"] and d.task == "binary"
    assert d.x_train.shape[1:] == (1, 12, 10)
    _write_images(tmp_path / "rgb", (9, 9), mode="RGB")
    d = load_dataset(str(tmp_path / "rgb"), kind="cnn")
    assert d.x_train.shape[1:] == (3, 9, 9) and d.x_train.max() <= 255


def test_npz_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, size=(40, 6, 6, 3)).astype(np.uint8)  # NHWC is accepted
    path = tmp_path / "tiles.npz"
    np.savez(path, x=x, y=np.array(["a", "b", "c", "d"] * 10))
    d = load_dataset(str(path), kind="cnn")
    assert d.x_train.shape[1:] == (3, 6, 6) and d.labels == ["a", "b", "c", "d"]
    assert d.task == "multiclass"


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "story.txt"
    path.write_text("The cat sat on the mat. " * 40)
    d = load_dataset(str(path), kind="lstm", window=4)
    assert d.task == "next-token" and d.x_train.dtype == np.int64
    assert set(d.vocabulary) == {UNK_TOKEN, "the", "cat", "sat", "on", "mat"}


# ------------------------------------------------------------------------- bad input


def _csv(tmp_path: Path, text: str, name: str = "data.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_missing_target_column_lists_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path, "a,b,c\n1,2,3\n")
    with pytest.raises(DataError) as err:
        load_dataset(path, kind="fnn", target="price")
    assert str(err.value) == "column 'price' not in data.csv; columns are: a, b, c"


def test_no_target_given_and_no_target_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, "a,b,c\n1,2,3\n")
    with pytest.raises(DataError, match="no 'target' column and no target was given"):
        load_dataset(path, kind="fnn")


def test_non_numeric_feature_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, "a,city,target\n1,paris,3\n2,rome,4\n")
    with pytest.raises(
        DataError, match=re.escape("feature column(s) 'city' in data.csv are not numeric")
    ):
        load_dataset(path, kind="fnn")


def test_nan_in_features(tmp_path: Path) -> None:
    path = _csv(tmp_path, "a,b,target\n1,,3\n2,5,4\n")
    with pytest.raises(DataError, match="missing or infinite values in feature column\\(s\\) 'b'"):
        load_dataset(path, kind="fnn")


def test_mixed_image_sizes(tmp_path: Path) -> None:
    for cls, size in (("a", (8, 8)), ("b", (9, 8))):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.zeros((size[1], size[0]), np.uint8)).save(tmp_path / cls / "1.png")
    with pytest.raises(
        DataError, match=re.escape("images of mixed sizes: b/1.png is 9x8 but a/1.png is 8x8")
    ):
        load_dataset(str(tmp_path), kind="cnn")


def test_empty_text_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("  \n ... \n")
    with pytest.raises(DataError, match=re.escape("text 'empty.txt' has no words")):
        load_dataset(str(path), kind="lstm")


def test_series_shorter_than_window(tmp_path: Path) -> None:
    path = _csv(tmp_path, "value\n" + "\n".join(str(i) for i in range(15)), "short.csv")
    with pytest.raises(DataError) as err:
        load_dataset(path, kind="lstm", window=20)
    msg = str(err.value)
    assert "series 'short.csv' has 15 values but the window is 20" in msg
    assert "need at least 30 values" in msg


def test_unreadable_file_type_and_missing_path(tmp_path: Path) -> None:
    path = _csv(tmp_path, "{}", "data.json")
    with pytest.raises(DataError, match=re.escape("cannot read data.json: expected a CSV")):
        load_dataset(path, kind="fnn")
    with pytest.raises(DataError, match="is neither a built-in data set"):
        load_dataset(str(tmp_path / "nope.csv"), kind="fnn")


def test_bad_input_writes_nothing(tmp_path: Path) -> None:
    path = _csv(tmp_path, "a,b\n1,2\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DataError):
        train(TrainSpec("fnn", path, target="price"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_train_and_export_on_user_rgb_images_and_text(tmp_path: Path) -> None:
    """User files go all the way: train, score, export with parity (3-channel CNN, text RNN)."""
    from training import export_onnx

    _write_images(tmp_path / "rgb", (9, 11), mode="RGB")
    images = train(TrainSpec("cnn", str(tmp_path / "rgb"), epochs=2))
    assert images.test_output.shape[1] == 2
    report = export_onnx(images, tmp_path / "rgb.onnx")
    assert report.max_diff <= 1e-4

    story = tmp_path / "story.txt"
    story.write_text("the cat sat on the mat and the dog sat on the log. " * 30)
    text = train(TrainSpec("gru", str(story), epochs=2, window=5))
    assert text.data.task == "next-token" and text.baseline_name == "kneser-ney"
    assert export_onnx(text, tmp_path / "text.onnx").max_diff <= 1e-4


def test_corrupt_or_incomplete_npz(tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.npz"
    corrupt.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(DataError, match=re.escape("cannot read broken.npz as an .npz archive")):
        load_dataset(str(corrupt), kind="cnn")
    partial = tmp_path / "partial.npz"
    np.savez(partial, images=np.zeros((3, 4, 4)))
    with pytest.raises(DataError) as err:
        load_dataset(str(partial), kind="cnn")
    assert str(err.value) == "partial.npz must hold arrays named 'x' and 'y'; it holds: images"
