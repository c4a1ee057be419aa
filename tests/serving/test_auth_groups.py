"""Endpoint groups and their credentials, over real gRPC and REST servers (serving/auth.py).

Every gRPC method and REST path of each group is called with no token, a wrong one, the
inference token and the admin token; the expected status comes from the group's rule, and the
matrix of what the server answered is printed (the README's security section shows it).
"""

from __future__ import annotations

import http.client
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving._proto import grpc_service_pb2 as pb
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from serving.auth import GRPC_GROUPS, REST_EQUIVALENT, Group, group_of
from serving.settings import Settings
from tests.serving.conftest import ServerThread, make_settings
from tests.serving.helpers import good_request

INFERENCE = "app-t0ken-1f"
ADMIN = "ops-t0ken-9c"
CREDENTIALS = {"none": None, "wrong": "Bearer nope", "inference": f"Bearer {INFERENCE}",
               "admin": f"Bearer {ADMIN}"}  # fmt: skip
OK, UNAUTH, DENIED = "OK", "UNAUTHENTICATED", "PERMISSION_DENIED"
#: The rule, per group and credential, with both tokens set (admin does not infer by default).
EXPECTED = {
    Group.HEALTH: {"none": OK, "wrong": OK, "inference": OK, "admin": OK},
    Group.INFERENCE: {"none": UNAUTH, "wrong": UNAUTH, "inference": OK, "admin": DENIED},
    Group.MODEL_REPOSITORY: {"none": UNAUTH, "wrong": UNAUTH, "inference": DENIED, "admin": OK},
    Group.STATISTICS: {"none": UNAUTH, "wrong": UNAUTH, "inference": DENIED, "admin": OK},
}
HTTP_CODE = {OK: 200, UNAUTH: 401, DENIED: 403}
# "regressor" is unloaded, then loaded back, by the admin rows; inference uses "classifier".
SVC = "/inference.GRPCInferenceService/"


def _md(token: str | None) -> list[tuple[str, str]] | None:
    return None if token is None else [("authorization", token)]


def grpc_calls(channel: grpc.Channel) -> dict[str, Callable[[Any], object]]:
    """gRPC method -> a call of it (metadata in), in the order the matrix runs them."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    return {
        "/grpc.health.v1.Health/Check": lambda md: health.Check(
            health_pb2.HealthCheckRequest(), metadata=md, timeout=10
        ),
        SVC + "ServerLive": lambda md: stub.ServerLive(pb.ServerLiveRequest(), metadata=md),
        SVC + "ServerReady": lambda md: stub.ServerReady(pb.ServerReadyRequest(), metadata=md),
        SVC + "ServerMetadata": lambda md: stub.ServerMetadata(
            pb.ServerMetadataRequest(), metadata=md
        ),
        SVC + "ModelReady": lambda md: stub.ModelReady(
            pb.ModelReadyRequest(name="classifier"), metadata=md
        ),
        SVC + "ModelMetadata": lambda md: stub.ModelMetadata(
            pb.ModelMetadataRequest(name="classifier"), metadata=md
        ),
        SVC + "ModelConfig": lambda md: stub.ModelConfig(
            pb.ModelConfigRequest(name="classifier"), metadata=md
        ),
        SVC + "ModelInfer": lambda md: stub.ModelInfer(good_request(), metadata=md, timeout=10),
        SVC + "ModelStreamInfer": lambda md: _stream(stub, md),
        SVC + "ModelStatistics": lambda md: stub.ModelStatistics(
            pb.ModelStatisticsRequest(name="classifier"), metadata=md
        ),
        SVC + "RepositoryIndex": lambda md: stub.RepositoryIndex(
            pb.RepositoryIndexRequest(), metadata=md
        ),
        SVC + "RepositoryModelUnload": lambda md: stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="regressor"), metadata=md, timeout=30
        ),
        SVC + "RepositoryModelLoad": lambda md: stub.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name="regressor"), metadata=md, timeout=30
        ),
    }


def _stream(stub: pb_grpc.GRPCInferenceServiceStub, md: Any) -> None:
    replies = list(stub.ModelStreamInfer(iter([good_request()]), metadata=md, timeout=10))
    assert len(replies) == 1 and not replies[0].error_message, replies


_INFER_JSON = b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}'
#: REST (method, path, endpoint as serving/http.py resolves it), in the order the matrix runs.
REST_PATHS = [
    ("GET", "/v2/health/live", "live"),
    ("GET", "/v2/health/ready", "ready"),
    ("GET", "/v2", "server_metadata"),
    ("GET", "/v2/models/classifier/ready", "model_ready"),
    ("GET", "/v2/models/classifier", "model_metadata"),
    ("GET", "/v2/models/classifier/config", "config"),
    ("POST", "/v2/models/classifier/infer", "infer"),
    ("GET", "/v2/models/classifier/stats", "stats"),
    ("GET", "/v2/models/stats", "stats"),
    ("POST", "/v2/repository/index", "index"),
    ("POST", "/v2/repository/models/regressor/unload", "unload"),
    ("POST", "/v2/repository/models/regressor/load", "load"),
]


def rest(port: int, method: str, path: str, token: str | None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {} if token is None else {"Authorization": token}
        body = _INFER_JSON if path.endswith("/infer") else None
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def grpc_outcome(call: Callable[[Any], object], token: str | None) -> str:
    try:
        call(_md(token))
    except grpc.RpcError as exc:
        return exc.code().name
    return OK


@pytest.fixture(scope="module")
def both(model_repo: Path) -> Iterator[ServerThread]:
    thread = ServerThread(
        make_settings(
            model_repo,
            model_names=["classifier", "regressor"],
            auth_token=INFERENCE,
            admin_token=ADMIN,
        )
    ).start()
    yield thread
    thread.stop()


def _print_matrix(title: str, rows: list[tuple[str, str, dict[str, str]]]) -> None:
    print(f"\n{title}\n| transport | call | group | " + " | ".join(CREDENTIALS) + " |")
    print("|---|---|---|" + "---|" * len(CREDENTIALS))
    for call, group, seen in rows:
        cells = " | ".join(seen[c] for c in CREDENTIALS)
        print(f"| {title.split(maxsplit=1)[0]} | `{call}` | {group} | {cells} |")


def test_every_grpc_method_has_a_group_and_is_in_the_matrix(both: ServerThread) -> None:
    with grpc.insecure_channel(both.address) as channel:
        covered = set(grpc_calls(channel))
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    every = {SVC + m.name for m in service.methods}
    assert every <= set(GRPC_GROUPS), every - set(GRPC_GROUPS)
    assert every <= covered, every - covered
    assert {e for _, _, e in REST_PATHS} == set(REST_EQUIVALENT)


def test_grpc_matrix_with_both_tokens(both: ServerThread) -> None:
    rows = []
    with grpc.insecure_channel(both.address) as channel:
        for method, call in grpc_calls(channel).items():
            group = group_of(method)
            seen = {name: grpc_outcome(call, token) for name, token in CREDENTIALS.items()}
            rows.append((method.rsplit("/", 1)[1], group.value, seen))
            assert seen == EXPECTED[group], (method, seen)
    _print_matrix("gRPC (auth + admin token)", rows)


def test_rest_matrix_with_both_tokens(both: ServerThread) -> None:
    assert both.server is not None and both.server.http_port is not None
    port = both.server.http_port
    rows = []
    for method, path, endpoint in REST_PATHS:
        group = group_of(REST_EQUIVALENT[endpoint])
        seen = {name: str(rest(port, method, path, token)) for name, token in CREDENTIALS.items()}
        rows.append((f"{method} {path}", group.value, seen))
        want = {name: str(HTTP_CODE[outcome]) for name, outcome in EXPECTED[group].items()}
        assert seen == want, (path, seen)
    # An unknown path is inference: 401 without a token, 404 with one.
    assert rest(port, "GET", "/v2/nothing", None) == 401
    assert rest(port, "GET", "/v2/nothing", CREDENTIALS["inference"]) == 404
    _print_matrix("REST (auth + admin token)", rows)


def test_refusals_name_the_credential_and_the_fix(both: ServerThread) -> None:
    with grpc.insecure_channel(both.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryIndex(
                pb.RepositoryIndexRequest(), metadata=_md(CREDENTIALS["inference"])
            )
        assert "inference token may not call the model-repository" in info.value.details()
        assert "send the admin token" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(good_request(), metadata=_md(CREDENTIALS["admin"]))
        assert "admin token may not call the inference" in info.value.details()


def test_without_admin_token_control_follows_the_inference_token(
    model_repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="serving"):
        thread = ServerThread(
            make_settings(model_repo, model_names=["classifier", "regressor"], auth_token=INFERENCE)
        ).start()
    try:
        lines = [r.getMessage() for r in caplog.records if "auth_control_plane" in r.getMessage()]
        assert len(lines) == 1 and "admin_token=False" in lines[0], lines
        assert caplog.records[[r.getMessage() for r in caplog.records].index(lines[0])].levelno \
            == logging.WARNING  # fmt: skip
        rows = []
        with grpc.insecure_channel(thread.address) as channel:
            for method, call in grpc_calls(channel).items():
                if group_of(method) not in (Group.MODEL_REPOSITORY, Group.STATISTICS):
                    continue
                seen = {
                    name: grpc_outcome(call, token)
                    for name, token in CREDENTIALS.items()
                    if name != "admin"
                }
                seen["admin"] = "-"
                rows.append((method.rsplit("/", 1)[1], group_of(method).value, seen))
                want = {"none": UNAUTH, "wrong": UNAUTH, "inference": OK, "admin": "-"}
                assert seen == want, (method, seen)
        _print_matrix("gRPC (auth token only: control follows it)", rows)
    finally:
        thread.stop()


def test_admin_token_alone_leaves_inference_open(model_repo: Path) -> None:
    thread = ServerThread(
        make_settings(model_repo, model_names=["classifier"], admin_token=ADMIN)
    ).start()
    try:
        with grpc.insecure_channel(thread.address) as channel:
            calls = grpc_calls(channel)
            assert grpc_outcome(calls[SVC + "ModelInfer"], None) == OK
            assert grpc_outcome(calls[SVC + "RepositoryIndex"], None) == UNAUTH
            assert grpc_outcome(calls[SVC + "RepositoryIndex"], CREDENTIALS["admin"]) == OK
    finally:
        thread.stop()


def test_admin_can_infer_when_asked(model_repo: Path) -> None:
    thread = ServerThread(
        make_settings(
            model_repo,
            model_names=["classifier"],
            auth_token=INFERENCE,
            admin_token=ADMIN,
            admin_can_infer=True,
        )
    ).start()
    try:
        assert thread.server is not None and thread.server.http_port is not None
        with grpc.insecure_channel(thread.address) as channel:
            calls = grpc_calls(channel)
            assert grpc_outcome(calls[SVC + "ModelInfer"], CREDENTIALS["admin"]) == OK
            assert grpc_outcome(calls[SVC + "RepositoryIndex"], CREDENTIALS["inference"]) == DENIED
        port = thread.server.http_port
        assert rest(port, "POST", "/v2/models/classifier/infer", CREDENTIALS["admin"]) == 200
    finally:
        thread.stop()


def test_audit_lines_name_credential_peer_model_outcome_and_no_token(
    model_repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="serving"):
        thread = ServerThread(
            make_settings(
                model_repo,
                model_names=["regressor"],
                auth_token=INFERENCE,
                admin_token=ADMIN,
            )
        ).start()
        try:
            assert thread.server is not None and thread.server.http_port is not None
            port = thread.server.http_port
            with grpc.insecure_channel(thread.address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                unload = pb.RepositoryModelUnloadRequest(model_name="regressor")
                with pytest.raises(grpc.RpcError):
                    stub.RepositoryModelUnload(unload, metadata=_md(CREDENTIALS["inference"]))
                stub.RepositoryModelUnload(unload, metadata=_md(CREDENTIALS["admin"]))
                stub.RepositoryModelLoad(
                    pb.RepositoryModelLoadRequest(model_name="regressor"),
                    metadata=_md(CREDENTIALS["admin"]),
                )
                with pytest.raises(grpc.RpcError):
                    stub.RepositoryModelLoad(
                        pb.RepositoryModelLoadRequest(model_name="nope"),
                        metadata=_md(CREDENTIALS["admin"]),
                    )
            assert rest(port, "POST", "/v2/repository/models/regressor/unload", None) == 401
            assert (
                rest(port, "POST", "/v2/repository/models/regressor/load", CREDENTIALS["admin"])
                == 200
            )
        finally:
            thread.stop()
    messages = [r.getMessage() for r in caplog.records]
    audit = [m for m in messages if m.startswith("event=control_action")]
    for line in audit:
        print(line)
    grpc_peer, rest_peer = "peer=ipv4:127.0.0.1:", "peer=ipv4:127.0.0.1:"
    expected = [
        ("credential=inference", grpc_peer, "action=unload", "model=regressor",
         "outcome=PERMISSION_DENIED"),
        ("credential=admin", grpc_peer, "action=unload", "model=regressor", "versions=-",
         "outcome=OK"),
        ("credential=admin", grpc_peer, "action=load", "model=regressor", "versions=1",
         "outcome=OK"),
        ("credential=admin", "action=load", "model=nope", "outcome=NOT_FOUND"),
        ("credential=none", rest_peer, "action=unload", "model=regressor",
         "outcome=UNAUTHENTICATED"),
        ("credential=admin", rest_peer, "action=load", "model=regressor", "outcome=OK"),
    ]  # fmt: skip
    assert len(audit) == len(expected), audit
    for line, parts in zip(audit, expected, strict=True):
        for part in parts:
            assert part in line, (part, line)
    for message in messages:
        assert INFERENCE not in message and ADMIN not in message, message


def test_tokens_from_files(model_repo: Path, tmp_path: Path) -> None:
    (tmp_path / "auth").write_text(f"  {INFERENCE}\n")
    (tmp_path / "admin").write_text(f"{ADMIN}\n")
    settings = make_settings(
        model_repo,
        model_names=["classifier"],
        auth_token_file=tmp_path / "auth",
        admin_token_file=tmp_path / "admin",
    )
    thread = ServerThread(settings).start()
    try:
        with grpc.insecure_channel(thread.address) as channel:
            calls = grpc_calls(channel)
            assert grpc_outcome(calls[SVC + "ModelInfer"], CREDENTIALS["inference"]) == OK
            assert grpc_outcome(calls[SVC + "RepositoryIndex"], CREDENTIALS["admin"]) == OK
            assert grpc_outcome(calls[SVC + "RepositoryIndex"], CREDENTIALS["inference"]) == DENIED
    finally:
        thread.stop()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match=r"admin_token_file .* is empty"):
        make_settings(model_repo, admin_token_file=tmp_path / "empty")
    with pytest.raises(ValueError, match="could not be read"):
        make_settings(model_repo, auth_token_file=tmp_path / "missing")
    with pytest.raises(ValueError, match="not both"):
        make_settings(model_repo, auth_token="x", auth_token_file=tmp_path / "auth")


def test_bad_token_settings_are_refused(model_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="admin token equals the auth token"):
        ServerThread(make_settings(model_repo, auth_token="same", admin_token="same")).start()
    # An empty variable (compose's ${VAR:-}, .env.example) is "not set".
    monkeypatch.setenv("NEUROSERVE_ADMIN_TOKEN", "")
    monkeypatch.setenv("NEUROSERVE_AUTH_TOKEN", "")
    settings = Settings()
    assert settings.admin_token is None and settings.auth_token is None
