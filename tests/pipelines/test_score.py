"""Batch scoring: real ONNX files, real Prefect tasks, a real Dask cluster, a real S3 API (moto's
server) for s3:// inputs and outputs, bad inputs refused."""

from __future__ import annotations

import dataclasses
import io
import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.errors import ScoringInputError
from pipelines.score import MAX_CHUNK_BATCHES, _stored_member, plan_chunks, run_score
from serving.runtime import OnnxModel, usable_cores
from tests.integration.stack import S3
from tests.pipelines.conftest import Exported
from tests.ports import free_port


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


# --------------------------------------------------------------------------- s3:// paths
BUCKET = "scoring"
#: A folder of every test's own folder that the key may read but not write.
READ_ONLY = "read-only"


@dataclass
class S3Bucket:
    """A bucket on a real S3 API (moto's server) that checks signatures, as MinIO does."""

    endpoint: str
    name: str
    key_id: str
    secret: str
    prefix: str = ""  # this test's own folder in the bucket

    def fs(self) -> Any:
        from pyarrow import fs

        host = self.endpoint.removeprefix("http://")
        return fs.S3FileSystem(
            endpoint_override=host, scheme="http", region="us-east-1",
            access_key=self.key_id, secret_key=self.secret,
        )  # fmt: skip

    def uri(self, key: str) -> str:
        return f"s3://{self.name}/{self.prefix}{key}"

    def put(self, key: str, data: bytes) -> None:
        with self.fs().open_output_stream(f"{self.name}/{self.prefix}{key}") as out:
            out.write(data)

    def get(self, key: str) -> bytes:
        with self.fs().open_input_stream(f"{self.name}/{self.prefix}{key}") as src:
            return bytes(src.read())

    def keys(self) -> list[str]:
        """Every object under this test's folder (relative keys)."""
        from pyarrow import fs

        where = f"{self.name}/{self.prefix}".rstrip("/")
        found = self.fs().get_file_info(
            fs.FileSelector(where, recursive=True, allow_not_found=True)
        )
        return sorted(i.path.removeprefix(where + "/") for i in found if i.type == fs.FileType.File)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Bucket]:
    """moto's S3 server on loopback: an IAM user's key allowed ``s3:*`` but writes under
    ``*/read-only/``, the bucket, then signatures enforced (unsigned or wrongly signed requests
    refused, as by MinIO)."""
    import boto3

    server = S3(free_port(), tmp_path_factory.mktemp("moto"))
    endpoint = server.endpoint
    try:
        server.start()
        setup = {"endpoint_url": endpoint, "region_name": "us-east-1",
                 "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}  # fmt: skip
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="scorer")
        iam.put_user_policy(
            UserName="scorer",
            PolicyName="s3",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                        {
                            "Effect": "Deny",
                            "Action": "s3:PutObject",
                            "Resource": f"arn:aws:s3:::{BUCKET}/*/{READ_ONLY}/*",
                        },
                    ],
                }
            ),
        )
        key = iam.create_access_key(UserName="scorer")["AccessKey"]
        boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
        enforce = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
            headers={"Content-Type": "text/plain"},
        )  # fmt: skip
        urllib.request.urlopen(enforce, timeout=10).close()
        yield S3Bucket(endpoint, BUCKET, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        server.process.stop()


@pytest.fixture
def bucket(s3_server: S3Bucket, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Bucket:
    """The server as the scorer finds it: endpoint and keys in the environment only (no AWS
    files, no instance metadata), and a folder of the bucket for this test alone."""
    for name in ("AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_SESSION_TOKEN"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return dataclasses.replace(s3_server, prefix=f"{uuid.uuid4().hex[:8]}/")


def _to_bytes(frame: pd.DataFrame, suffix: str) -> bytes:
    sink = io.BytesIO()
    if suffix == ".csv":
        frame.to_csv(sink, index=False)
    else:
        frame.to_parquet(sink, index=False)
    return sink.getvalue()


def _from_bytes(data: bytes, suffix: str) -> pd.DataFrame:
    source = io.BytesIO(data)
    return pd.read_csv(source) if suffix == ".csv" else pd.read_parquet(source)


@pytest.mark.parametrize(("inp", "out"), [(".csv", ".parquet"), (".parquet", ".csv")])
def test_s3_table_in_and_out_matches_local_files(
    home: Path, table_model: Exported, bucket: S3Bucket, inp: str, out: str
) -> None:
    """A table read from the bucket and the predictions written back equal the local run's;
    the bucket then holds the input and the output, nothing else."""
    frame = _table_frame(table_model)
    bucket.put(f"in{inp}", _to_bytes(frame, inp))
    (home / f"in{inp}").write_bytes(_to_bytes(frame, inp))
    run_score(str(table_model.path), str(home / f"in{inp}"), str(home / f"local{out}"),
              show_progress=False)  # fmt: skip
    outcome = run_score(
        str(table_model.path), bucket.uri(f"in{inp}"), bucket.uri(f"scored/out{out}"),
        show_progress=False,
    )  # fmt: skip
    assert outcome.output == bucket.uri(f"scored/out{out}") and outcome.rows == 40
    got = _from_bytes(bucket.get(f"scored/out{out}"), out)
    local = (
        pd.read_csv(home / f"local{out}")
        if out == ".csv"
        else pd.read_parquet(home / f"local{out}")
    )
    pd.testing.assert_frame_equal(got, local)
    assert list(got["id"]) == list(frame["id"])
    assert bucket.keys() == [f"in{inp}", f"scored/out{out}"]


def test_s3_npz_and_image_prefix(home: Path, image_model: Exported, bucket: S3Bucket) -> None:
    """An .npz object and a prefix of PNG objects (other objects and sub-prefixes under it
    ignored, as a local folder's) score as the model does on the same arrays."""
    x = image_model.result.data.x_test[:12]
    expected = _onnx(image_model, x)
    sink = io.BytesIO()
    np.savez(sink, x=x, ids=np.arange(700, 712))
    bucket.put("arrays/digits.npz", sink.getvalue())
    run_score(str(image_model.path), bucket.uri("arrays/digits.npz"),
              bucket.uri("npz.parquet"), show_progress=False)  # fmt: skip
    got = pd.read_parquet(io.BytesIO(bucket.get("npz.parquet")))
    assert list(got["id"]) == list(range(700, 712))
    np.testing.assert_allclose(got.filter(like="prob_").to_numpy(), expected, atol=1e-5)

    for i, img in enumerate(x):
        png = io.BytesIO()
        Image.fromarray(img[0].astype(np.uint8), mode="L").save(png, format="PNG")
        bucket.put(f"pngs/img{i:02d}.png", png.getvalue())
    bucket.put("pngs/README.txt", b"not an image")
    bucket.put("pngs/older/big.png", b"not read: below a sub-prefix")
    outcome = run_score(str(image_model.path), bucket.uri("pngs/"), bucket.uri("pngs.csv"),
                        show_progress=False)  # fmt: skip
    assert outcome.rows == 12
    got = pd.read_csv(io.BytesIO(bucket.get("pngs.csv")))
    assert got["file"].tolist() == [f"img{i:02d}.png" for i in range(12)]
    np.testing.assert_allclose(got.filter(like="prob_").to_numpy(), expected, atol=1e-5)
    # Without the trailing slash the prefix is found the same way.
    run_score(str(image_model.path), bucket.uri("pngs"), bucket.uri("again.csv"),
              show_progress=False)  # fmt: skip
    pd.testing.assert_frame_equal(pd.read_csv(io.BytesIO(bucket.get("again.csv"))), got)


def test_s3_bad_rows_are_reported_and_nothing_is_written(
    table_model: Exported, bucket: S3Bucket
) -> None:
    """The whole object is validated before a row is scored; the output key never appears."""
    frame = _table_frame(table_model).astype({"mean radius": object})
    frame.loc[3, "mean radius"] = "abc"
    bucket.put("in.csv", _to_bytes(frame, ".csv"))
    with pytest.raises(ScoringInputError, match=r"in\.csv: bad rows.*'abc'.*line 5"):
        run_score(str(table_model.path), bucket.uri("in.csv"), bucket.uri("out.csv"),
                  show_progress=False)  # fmt: skip
    assert bucket.keys() == ["in.csv"]


def _bad_s3_cases(bucket: S3Bucket) -> list[tuple[str, str, str]]:
    """(input, output, the error's text): each one line, raised before anything is written."""
    uri = bucket.uri
    return [
        ("s3://no-such-bucket/in.csv", uri("o.csv"), "bucket 'no-such-bucket' does not exist"),
        (uri("nope.csv"), uri("o.csv"), f"{uri('nope.csv')}: no such object in bucket 'scoring'"),
        (uri("empty/"), uri("o.csv"), f"{uri('empty/')}: no objects under this prefix"),
        ("s3:///in.csv", uri("o.csv"), "names no bucket; expected s3://BUCKET/KEY"),
        ("s3://", uri("o.csv"), "names no bucket"),
        (uri("in.csv"), uri("o.txt"), "expected a .csv or .parquet file name"),
        (uri("in.csv"), uri("results/"), "expected a .csv or .parquet file name"),
        (uri("in.csv"), "s3:///o.csv", "names no bucket"),
        (uri("in.csv"), "s3://no-such-bucket/o.csv", "bucket 'no-such-bucket' does not exist"),
        (uri("in.txt"), uri("o.csv"), "unsupported input; expected .csv, .parquet, .npz"),
        ("gs://elsewhere/in.csv", uri("o.csv"), "gs:// paths are not supported"),
    ]


def test_s3_bad_paths_are_one_line_and_write_nothing(
    table_model: Exported, bucket: S3Bucket
) -> None:
    """A missing bucket, key or prefix, a path without a bucket, an output key with the wrong
    suffix, or an object the scorer cannot read: one line naming it, the bucket unchanged."""
    bucket.put("in.csv", _to_bytes(_table_frame(table_model), ".csv"))
    bucket.put("in.txt", b"id,x\n1,2\n")
    for source, target, message in _bad_s3_cases(bucket):
        with pytest.raises(ScoringInputError) as exc:
            run_score(str(table_model.path), source, target, show_progress=False)
        text = str(exc.value)
        assert message in text and "\n" not in text, (source, target, text)
        assert bucket.keys() == ["in.csv", "in.txt"], (source, target)


def test_s3_endpoint_that_does_not_answer_fails_fast(
    table_model: Exported, bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listens at the endpoint: one line saying so, in seconds (a few retries)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    start = time.monotonic()
    with pytest.raises(ScoringInputError) as exc:
        run_score(str(table_model.path), bucket.uri("in.csv"), bucket.uri("o.csv"),
                  show_progress=False)  # fmt: skip
    took = time.monotonic() - start
    text = str(exc.value)
    assert text.startswith(f"{bucket.uri('in.csv')}: the S3 endpoint could not be reached"), text
    assert "\n" not in text and took < 20, (took, text)


def test_s3_without_credentials_says_so(
    table_model: Exported, bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No keys anywhere: the server refuses the unsigned request, and the line says no
    credentials are set and which to set; nothing is written."""
    bucket.put("in.csv", _to_bytes(_table_frame(table_model), ".csv"))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ScoringInputError) as exc:
        run_score(str(table_model.path), bucket.uri("in.csv"), bucket.uri("o.csv"),
                  show_progress=False)  # fmt: skip
    text = str(exc.value)
    assert "no S3 credentials are set (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in text, text
    assert "\n" not in text
    assert bucket.keys() == ["in.csv"]


def test_s3_on_the_command_line(table_model: Exported, bucket: S3Bucket) -> None:
    """`neuroserve score` prints where the output went; a missing key is one red line."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    runner = CliRunner()
    bucket.put("in.csv", _to_bytes(_table_frame(table_model), ".csv"))
    ok = runner.invoke(app, ["score", str(table_model.path), "--input", bucket.uri("in.csv"),
                             "--output", bucket.uri("out.csv")])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "scored 40 rows" in ok.stdout and f"-> {bucket.uri('out.csv')}" in ok.stdout
    bad = runner.invoke(app, ["score", str(table_model.path), "--input", bucket.uri("no.csv"),
                              "--output", bucket.uri("out2.csv")])  # fmt: skip
    assert bad.exit_code == 2, bad.output
    line = bad.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in bad.output, bad.output
    assert line.startswith("error:") and "no such object" in line, line
    assert bucket.keys() == ["in.csv", "out.csv"]


def test_s3_refused_upload_after_scoring_leaves_no_object(
    table_model: Exported, bucket: S3Bucket
) -> None:
    """The bucket exists but refuses the write (its policy): the error comes after scoring, as
    one line, and no object, partial or whole, appears at the key."""
    bucket.put("in.csv", _to_bytes(_table_frame(table_model), ".csv"))
    target = bucket.uri(f"{READ_ONLY}/out.parquet")
    with pytest.raises(ScoringInputError) as exc:
        run_score(str(table_model.path), bucket.uri("in.csv"), target, show_progress=False)
    text = str(exc.value)
    assert text.startswith(f"{target}: writing failed") and "ACCESS_DENIED" in text, text
    assert "\n" not in text
    assert bucket.keys() == ["in.csv"]
