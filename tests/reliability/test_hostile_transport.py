"""Hostile transport and access: malformed protobuf bytes, oversized frames, unknown methods,
tokens, certificates, and names that try to climb out of the model repository.

"Nobody let in" is checked by effect, not only by status: a refused RepositoryModelUnload leaves
the model serving, a refused ModelInfer never reaches the session (statistics unchanged), and a
traversal attempt never creates a session for a file outside the repository (the runtime logs
every file it opens a session on).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving._proto import grpc_service_pb2 as pb
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from tests.reliability.conftest import LogCollector
from tests.serving import onnx_models
from tests.serving.certs import write_certs
from tests.serving.conftest import ServerThread, make_settings
from tests.serving.helpers import good_request

SERVICE = "/inference.GRPCInferenceService/"
READ_ONLY_METHODS = [
    "ModelInfer",
    "ModelMetadata",
    "ModelConfig",
    "ModelReady",
    "ModelStatistics",
    "ServerMetadata",
    "RepositoryIndex",
    "RepositoryModelLoad",
]
MALFORMED_PER_METHOD = 40


def _raw_call(channel: grpc.Channel, method: str, payload: bytes) -> str:
    call = channel.unary_unary(SERVICE + method, request_serializer=None)
    try:
        call(payload, timeout=10)
    except grpc.RpcError as exc:
        return exc.code().name
    return "OK"


def _alive(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
    assert stub.ModelInfer(good_request(), timeout=10).outputs[0].name == "output"


def _malformed_payloads(rng: random.Random) -> Iterator[bytes]:
    """Random bytes, truncated real requests, and a few classic protobuf traps."""
    real = good_request().SerializeToString()
    traps = [
        b"\x0a\xff\xff\xff\xff\x0f",  # length-delimited field claiming 4 GiB
        b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # over-long varint
        b"\x07",  # field 0 / invalid wire type
        b"\x0b\x0c",  # deprecated groups, unbalanced
        bytes([0x2A]) + b"\xff" * 10,  # inputs field, garbage length
    ]
    yield from traps
    for i in range(MALFORMED_PER_METHOD - len(traps)):
        if i % 2:
            yield real[: rng.randrange(1, len(real))]
        else:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))


def test_malformed_protobuf_bytes_never_take_the_server_down(
    channel: grpc.Channel, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    rng = random.Random(1234)
    codes: Counter[str] = Counter()
    index_before = stub.RepositoryIndex(pb.RepositoryIndexRequest())
    for method in READ_ONLY_METHODS:
        for payload in _malformed_payloads(rng):
            codes[_raw_call(channel, method, payload)] += 1
        _alive(stub)
    print("malformed protobuf outcomes:", dict(codes))
    assert sum(codes.values()) == len(READ_ONLY_METHODS) * MALFORMED_PER_METHOD
    # Bytes that happen to decode are judged as requests; undecodable ones are the client's
    # mistake (INVALID_ARGUMENT). Every call got an answer; nothing hung or changed.
    assert set(codes) <= {"INVALID_ARGUMENT", "NOT_FOUND", "OK"}, codes
    assert codes["INVALID_ARGUMENT"] > len(READ_ONLY_METHODS) * MALFORMED_PER_METHOD // 2
    assert stub.RepositoryIndex(pb.RepositoryIndexRequest()) == index_before


def test_undecodable_request_bytes_are_invalid_argument(
    channel: grpc.Channel, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    payload = b"\x0a\xff\xff\xff\xff\x0f"  # a string field claiming 4 GiB
    assert _raw_call(channel, "ModelInfer", payload) == "INVALID_ARGUMENT"


def test_oversized_frame_is_refused_and_server_stays_up(
    channel: grpc.Channel, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """The shared test server caps messages at 8 MiB; 9 MiB is refused before decoding."""
    big = pb.ModelInferRequest(model_name="classifier")
    big.inputs.add(name="input", datatype="FP32", shape=[589824, 4])
    big.raw_input_contents.append(np.zeros((589824, 4), np.float32).tobytes())
    assert big.ByteSize() > 9 * 2**20
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(big, timeout=20)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    _alive(stub)


@pytest.mark.parametrize(
    "method",
    [
        "/inference.GRPCInferenceService/NoSuchMethod",
        "/inference.GRPCInferenceService/modelinfer",
        "/nope.Service/Call",
        "/inference.GRPCInferenceService/ModelInfer/extra",
        "/",
    ],
)
def test_unknown_methods_are_unimplemented(
    channel: grpc.Channel, stub: pb_grpc.GRPCInferenceServiceStub, method: str
) -> None:
    call = channel.unary_unary(method, request_serializer=None)
    with pytest.raises(grpc.RpcError) as info:
        call(b"\x0a\x01x", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    _alive(stub)


# --------------------------------------------------------------------------- tokens
TOKEN = "s3cret-T0ken"
WRONG_TOKENS = [
    None,
    "",
    "Bearer",
    "Bearer ",
    f"bearer {TOKEN}",
    TOKEN,
    f"Bearer {TOKEN[:-1]}",
    f"Bearer {TOKEN}x",
    f"Bearer  {TOKEN}",
    f"Bearer {TOKEN.upper()}",
    f"Basic {TOKEN}",
    "Bearer " + "A" * 4000,
]


@pytest.fixture
def auth_server(model_repo: Path) -> Iterator[ServerThread]:
    thread = ServerThread(
        make_settings(model_repo, model_names=["classifier", "regressor"], auth_token=TOKEN)
    ).start()
    yield thread
    thread.stop()


def _md(token: str | None) -> list[tuple[str, str]] | None:
    return None if token is None else [("authorization", token)]


def test_wrong_tokens_are_refused_on_every_guarded_rpc(auth_server: ServerThread) -> None:
    good = [("authorization", f"Bearer {TOKEN}")]
    with grpc.insecure_channel(auth_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = stub.ModelStatistics(pb.ModelStatisticsRequest(name="classifier"), metadata=good)
        calls = {
            "ModelInfer": lambda md: stub.ModelInfer(good_request(), metadata=md, timeout=5),
            "ModelMetadata": lambda md: stub.ModelMetadata(
                pb.ModelMetadataRequest(name="classifier"), metadata=md, timeout=5
            ),
            "ModelStatistics": lambda md: stub.ModelStatistics(
                pb.ModelStatisticsRequest(name="classifier"), metadata=md, timeout=5
            ),
            "RepositoryIndex": lambda md: stub.RepositoryIndex(
                pb.RepositoryIndexRequest(), metadata=md, timeout=5
            ),
            "RepositoryModelUnload": lambda md: stub.RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(model_name="classifier"), metadata=md, timeout=5
            ),
            "ModelStreamInfer": lambda md: list(
                stub.ModelStreamInfer(iter([good_request()]), metadata=md, timeout=5)
            ),
        }
        refused = 0
        for token in WRONG_TOKENS:
            for name, call in calls.items():
                with pytest.raises(grpc.RpcError) as info:
                    call(_md(token))
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, (name, token)
                refused += 1
        print(f"refused {refused} unauthenticated calls")
        # By effect: nothing ran, nothing was unloaded.
        after = stub.ModelStatistics(pb.ModelStatisticsRequest(name="classifier"), metadata=good)
        assert after == before
        assert stub.ModelReady(pb.ModelReadyRequest(name="classifier"), metadata=good).ready
        assert stub.ModelInfer(good_request(), metadata=good, timeout=5).outputs
        # Health and liveness stay open for probes.
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
        assert (
            health.Check(
                health_pb2.HealthCheckRequest(),
                metadata=[("authorization", "Bearer wrong")],
                timeout=5,
            ).status
            == 1
        )


def test_reflection_is_guarded_too(auth_server: ServerThread) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(auth_server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answers = list(
            stub.ServerReflectionInfo(
                iter([request]), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=5
            )
        )
        assert answers and answers[0].list_services_response.service


# --------------------------------------------------------------------------- TLS
@pytest.fixture
def two_pkis(tmp_path: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Two unrelated CAs, each with a server and a client certificate."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return write_certs(tmp_path / "a"), write_certs(tmp_path / "b")


def _ready(
    address: str,
    ca: Path,
    client: dict[str, Path] | None = None,
) -> str:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client["client_key"].read_bytes() if client else None,
        certificate_chain=client["client_cert"].read_bytes() if client else None,
    )
    with grpc.secure_channel(address, creds) as channel:
        try:
            pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(
                pb.ServerReadyRequest(), timeout=3
            )
        except grpc.RpcError as exc:
            return exc.code().name
    return "OK"


def test_tls_refuses_clients_trusting_another_ca(
    model_repo: Path, two_pkis: tuple[dict[str, Path], dict[str, Path]]
) -> None:
    a, b = two_pkis
    thread = ServerThread(
        make_settings(
            model_repo,
            model_names=["classifier"],
            tls_cert_file=a["server_cert"],
            tls_key_file=a["server_key"],
        )
    ).start()
    try:
        address = "localhost:" + thread.address.rsplit(":", 1)[1]
        assert _ready(address, b["ca"]) == "UNAVAILABLE"  # wrong CA: handshake fails
        with grpc.insecure_channel(address) as plain:  # plaintext to a TLS port
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.GRPCInferenceServiceStub(plain).ServerReady(
                    pb.ServerReadyRequest(), timeout=3
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert _ready(address, a["ca"]) == "OK"
    finally:
        thread.stop()


def test_mtls_refuses_missing_and_foreign_client_certificates(
    model_repo: Path, two_pkis: tuple[dict[str, Path], dict[str, Path]]
) -> None:
    a, b = two_pkis
    thread = ServerThread(
        make_settings(
            model_repo,
            model_names=["classifier"],
            tls_cert_file=a["server_cert"],
            tls_key_file=a["server_key"],
            tls_ca_file=a["ca"],
        )
    ).start()
    try:
        address = "localhost:" + thread.address.rsplit(":", 1)[1]
        assert _ready(address, a["ca"]) == "UNAVAILABLE"  # no client certificate
        assert _ready(address, a["ca"], client=b) == "UNAVAILABLE"  # signed by another CA
        assert _ready(address, a["ca"], client=a) == "OK"
    finally:
        thread.stop()


# --------------------------------------------------------------------------- traversal
TRAVERSAL_NAMES = [
    "..",
    ".",
    "../outside",
    "../outside/evil",
    "../../etc",
    "../etc",
    "/etc/passwd",
    "classifier/../../outside/evil",
    "classifier/..",
    "%2e%2e",
    "..%2fetc",
    "evil\x00",
    "link",
    "evil",
    "~",
    "classifier\\..\\..\\outside",
]


def test_path_traversal_is_refused_and_nothing_outside_is_opened(
    tmp_path: Path, server_log: LogCollector
) -> None:
    repo = tmp_path / "repo"
    outside = tmp_path / "outside"
    onnx_models.save(onnx_models.classifier(), repo / "classifier" / "1" / "model.onnx")
    onnx_models.save(onnx_models.regressor(), outside / "evil" / "1" / "model.onnx")
    (repo / "link").symlink_to(outside / "evil")  # a model directory leaving the root
    (repo / "classifier" / "7").symlink_to(outside / "evil" / "1")  # a version leaving it
    thread = ServerThread(make_settings(repo)).start()
    try:
        with grpc.insecure_channel(thread.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
            assert [(m.name, m.version) for m in index.models] == [("classifier", "1")]
            for name in TRAVERSAL_NAMES:
                for rpc in (stub.RepositoryModelLoad, stub.RepositoryModelUnload):
                    request_type = (
                        pb.RepositoryModelLoadRequest
                        if rpc is stub.RepositoryModelLoad
                        else pb.RepositoryModelUnloadRequest
                    )
                    with pytest.raises(grpc.RpcError) as info:
                        rpc(request_type(model_name=name), timeout=10)
                    assert info.value.code() in {
                        grpc.StatusCode.INVALID_ARGUMENT,
                        grpc.StatusCode.NOT_FOUND,
                    }, (name, info.value.details())
            for model, version in (
                ("classifier", "../1"),
                ("classifier", "7"),
                ("classifier", "1/../7"),
                ("../classifier", ""),
                ("link", ""),
                ("../outside/evil", "1"),
            ):
                request = good_request()
                request.model_name, request.model_version = model, version
                with pytest.raises(grpc.RpcError) as info:
                    stub.ModelInfer(request, timeout=10)
                assert info.value.code() in {
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.NOT_FOUND,
                }, (model, version)
            assert stub.ModelInfer(good_request(), timeout=10).model_version == "1"
            index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
            assert [(m.name, m.version) for m in index.models] == [("classifier", "1")]
    finally:
        thread.stop()
    sessions = server_log.matching("event=session_created")
    assert sessions and all(str(outside) not in line for line in sessions), sessions
    assert not server_log.matching("event=model_loading", "model=link")
    assert not server_log.matching("event=model_loading", "version=7")
