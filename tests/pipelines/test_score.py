"""Batch scoring: real ONNX files, real Prefect tasks, a real Dask cluster, bad inputs refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.errors import ScoringInputError
from pipelines.score import MAX_CHUNK_BATCHES, _stored_member, plan_chunks, run_score
from serving.runtime import OnnxModel, usable_cores
from tests.pipelines.conftest import Exported


def _onnx(model: Exported, x: np.ndarray) -> np.ndarray:
    m = OnnxModel(model.path)
    return m.run({m.input_names[0]: x.astype(np.float32)})[m.output_names[0]]


def _table_frame(model: Exported, n: int = 40) -> pd.DataFrame:
    data = model.result.data
    frame = pd.DataFrame(data.x_test[:n], columns=data.feature_names)
    # Columns in another order than the model's, ids that are not row numbers.
    frame = frame[list(reversed(data.feature_names))]
    frame.insert(0, "id", [f"patient-{i:03d}" for i in range(100, 100 + n)])
    return frame


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_keeps_ids_and_adds_label_and_probabilities(
    home: Path, table_model: Exported, suffix: str
) -> None:
    frame = _table_frame(table_model)
    src = home / f"in{suffix}"
    frame.to_csv(src, index=False) if suffix == ".csv" else frame.to_parquet(src, index=False)
    dst = home / f"out{suffix}"
    out = run_score(str(table_model.path), str(src), str(dst), chunk_size=16, show_progress=False)
    assert out.rows == 40 and out.chunks == 3
    got = pd.read_csv(dst) if suffix == ".csv" else pd.read_parquet(dst)
    labels = table_model.result.data.labels
    assert list(got.columns) == ["id", "label"] + [f"prob_{lab}" for lab in labels]
    assert list(got["id"]) == list(frame["id"])
    expected = _onnx(table_model, table_model.result.data.x_test[:40])
    np.testing.assert_allclose(got[[f"prob_{lab}" for lab in labels]].to_numpy(), expected, 1e-5)
    assert list(got["label"].astype(str)) == [labels[i] for i in expected.argmax(axis=1)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["mean radius"]), "Missing: mean radius"),
        (lambda f: f.assign(colour=1.0), "Unexpected: colour"),
        (
            lambda f: f.rename(columns={"mean radius": "mean_radius"}),
            "Misnamed\\? 'mean_radius' -> 'mean radius'",
        ),
    ],
)
def test_columns_must_match_feature_names(
    home: Path, table_model: Exported, change: object, message: str
) -> None:
    frame = change(_table_frame(table_model))  # type: ignore[operator]
    frame.to_csv(home / "in.csv", index=False)
    with pytest.raises(ScoringInputError, match=message):
        run_score(str(table_model.path), str(home / "in.csv"), str(home / "out.csv"))
    assert not (home / "out.csv").exists()


def test_bad_rows_are_reported_with_line_numbers_not_dropped(
    home: Path, table_model: Exported
) -> None:
    frame = _table_frame(table_model).astype({"mean radius": object})
    frame.loc[3, "mean radius"] = "abc"
    frame.loc[5, "mean radius"] = ""
    frame.to_csv(home / "in.csv", index=False)
    with pytest.raises(
        ScoringInputError, match=r"column 'mean radius': 2 bad value\(s\).*'abc'.*lines 5, 7"
    ):
        run_score(str(table_model.path), str(home / "in.csv"), str(home / "out.csv"))
    assert not (home / "out.csv").exists()


def test_images_from_npz_and_folder(home: Path, image_model: Exported) -> None:
    data = image_model.result.data
    x = data.x_test[:25]
    expected = _onnx(image_model, x)
    np.savez(home / "imgs.npz", x=x[:, 0], ids=np.arange(500, 525))  # [N, H, W] is accepted
    out = run_score(
        str(image_model.path),
        str(home / "imgs.npz"),
        str(home / "a.csv"),
        chunk_size=10,
        show_progress=False,
    )
    got = pd.read_csv(home / "a.csv")
    assert list(got["id"]) == list(range(500, 525)) and out.chunks == 3
    np.testing.assert_allclose(got.filter(like="prob_").to_numpy(), expected, atol=1e-5)

    folder = home / "pngs"
    folder.mkdir()
    for i, img in enumerate(x):
        Image.fromarray(img[0].astype(np.uint8), mode="L").save(folder / f"img{i:02d}.png")
    run_score(str(image_model.path), str(folder), str(home / "b.csv"), show_progress=False)
    got_b = pd.read_csv(home / "b.csv")
    assert got_b["file"].iloc[0] == "img00.png" and len(got_b) == 25
    np.testing.assert_allclose(got_b.filter(like="prob_").to_numpy(), expected, atol=1e-5)


def test_wrong_image_size_is_refused(home: Path, image_model: Exported) -> None:
    np.savez(home / "big.npz", x=np.zeros((4, 1, 28, 28), np.float32))
    with pytest.raises(ScoringInputError, match=r"\[1, 28, 28\].*1 channel\(s\) x 8 x 8"):
        run_score(str(image_model.path), str(home / "big.npz"), str(home / "o.csv"))
    folder = home / "pngs"
    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "ok.png")
    Image.new("L", (16, 16)).save(folder / "big.png")
    with pytest.raises(ScoringInputError, match=r"big\.png is 16x16"):
        run_score(str(image_model.path), str(folder), str(home / "o.csv"))
    assert not (home / "o.csv").exists()


def test_series_scored_as_sliding_windows(home: Path, series_model: Exported) -> None:
    values = np.abs(np.sin(np.arange(50) / 5.0)) * 100
    pd.DataFrame({"year": np.arange(1950, 2000), "sunspots": values}).to_csv(
        home / "s.csv", index=False
    )
    window = int(OnnxModel(series_model.path).metadata["window"])
    run_score(
        str(series_model.path),
        str(home / "s.csv"),
        str(home / "f.csv"),
        id_column="year",
        show_progress=False,
    )
    got = pd.read_csv(home / "f.csv")
    assert len(got) == 50 - window + 1
    assert got["year"].iloc[0] == 1950 + window - 1 and got["year"].iloc[-1] == 1999
    first = _onnx(series_model, values[:window].reshape(1, window, 1))
    assert got["forecast_next"].iloc[0] == pytest.approx(float(first[0, 0]), rel=1e-5)


def test_chunks_run_on_a_dask_cluster(home: Path, table_model: Exported) -> None:
    from distributed import LocalCluster

    frame = _table_frame(table_model)
    frame.to_csv(home / "in.csv", index=False)
    run_score(
        str(table_model.path),
        str(home / "in.csv"),
        str(home / "local.csv"),
        chunk_size=8,
        show_progress=False,
    )
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        out = run_score(
            str(table_model.path),
            str(home / "in.csv"),
            str(home / "dask.csv"),
            chunk_size=8,
            dask_address=cluster.scheduler_address,
            show_progress=False,
        )
    assert out.chunks == 5
    pd.testing.assert_frame_equal(pd.read_csv(home / "dask.csv"), pd.read_csv(home / "local.csv"))


def test_model_metadata_drives_output_columns(table_model: Exported) -> None:
    meta = OnnxModel(table_model.path).metadata
    assert json.loads(meta["feature_names"])[0] == "mean radius"
    assert meta["task"] == "binary"


def test_unreachable_dask_scheduler_is_named(home: Path, table_model: Exported) -> None:
    _table_frame(table_model).to_csv(home / "in.csv", index=False)
    with pytest.raises(ScoringInputError, match=r"Dask scheduler at 'tcp://127\.0\.0\.1:1'"):
        run_score(
            str(table_model.path),
            str(home / "in.csv"),
            str(home / "o.csv"),
            dask_address="tcp://127.0.0.1:1",
        )


def test_chunks_are_whole_batches_sized_to_keep_workers_busy() -> None:
    assert plan_chunks(5000, 1024, None, workers=2) == [(0, 2500), (2500, 5000)]
    assert plan_chunks(900, 1024, None, workers=2) == [(0, 900)]  # one batch: one chunk
    assert plan_chunks(1500, 1024, None, workers=4) == [(0, 750), (750, 1500)]
    big = plan_chunks(1_000_000, 1024, None, workers=2)
    sizes = [b - a for a, b in big]
    assert len(big) % 2 == 0 and max(sizes) <= MAX_CHUNK_BATCHES * 1024
    assert max(sizes) - min(sizes) <= len(big) and big[-1][1] == 1_000_000
    assert plan_chunks(40, 8, 16, workers=2) == [(0, 16), (16, 32), (32, 40)]  # explicit wins


def test_batch_size_and_chunking_never_change_results(home: Path, image_model: Exported) -> None:
    x = image_model.result.data.x_test[:37]
    np.savez(home / "imgs.npz", x=x)
    expected = _onnx(image_model, x)
    frames = []
    for batch, chunk in ((1, None), (5, 12), (64, None)):
        out = run_score(
            str(image_model.path),
            str(home / "imgs.npz"),
            str(home / f"b{batch}.csv"),
            batch_size=batch,
            chunk_size=chunk,
            show_progress=False,
        )
        assert out.batch_size == batch and out.rows == 37
        assert out.chunks == len(plan_chunks(37, batch, chunk, workers=usable_cores()))
        frames.append(pd.read_csv(home / f"b{batch}.csv"))
    for got in frames:
        np.testing.assert_allclose(got.filter(like="prob_").to_numpy(), expected, atol=1e-5)
        assert list(got["row"]) == list(range(37))


@pytest.mark.parametrize(("option", "value"), [("batch_size", 0), ("chunk_size", -5)])
def test_sizes_below_one_are_refused(
    home: Path, image_model: Exported, option: str, value: int
) -> None:
    np.savez(home / "imgs.npz", x=image_model.result.data.x_test[:3])
    flag = "--" + option.replace("_", "-")
    with pytest.raises(ScoringInputError, match=f"{flag} must be at least 1, got {value}"):
        run_score(
            str(image_model.path),
            str(home / "imgs.npz"),
            str(home / "o.csv"),
            show_progress=False,
            **{option: value},  # type: ignore[arg-type]
        )
    assert not (home / "o.csv").exists()


def test_stored_npz_is_mapped_and_compressed_npz_loaded_same_result(
    home: Path, image_model: Exported
) -> None:
    x = image_model.result.data.x_test[:30]
    np.savez(home / "plain.npz", x=x, ids=np.arange(30))
    np.savez_compressed(home / "packed.npz", x=x, ids=np.arange(30))
    mapped = _stored_member(home / "plain.npz", "x")
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, x)
    assert _stored_member(home / "packed.npz", "x") is None  # deflated: loaded the usual way
    assert _stored_member(home / "plain.npz", "missing") is None
    for name in ("plain", "packed"):
        run_score(
            str(image_model.path),
            str(home / f"{name}.npz"),
            str(home / f"{name}.csv"),
            show_progress=False,
        )
    pd.testing.assert_frame_equal(pd.read_csv(home / "plain.csv"), pd.read_csv(home / "packed.csv"))
    np.testing.assert_allclose(
        pd.read_csv(home / "plain.csv").filter(like="prob_").to_numpy(),
        _onnx(image_model, x),
        atol=1e-5,
    )
