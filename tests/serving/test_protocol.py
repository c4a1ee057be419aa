"""The wire contract: our protos against Triton's (as shipped in tritonclient), and codegen."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tritonclient.grpc.model_config_pb2 as triton_config
import tritonclient.grpc.service_pb2 as triton_service
from google.protobuf.descriptor import Descriptor

from serving._proto import grpc_service_pb2, model_config_pb2

ROOT = Path(__file__).resolve().parents[2]


def _compare(ours: Descriptor, theirs: Descriptor) -> None:
    assert ours.full_name == theirs.full_name
    for field in ours.fields:
        other = theirs.fields_by_name.get(field.name)
        assert other is not None, f"{ours.full_name}.{field.name} is not in Triton's proto"
        assert field.number == other.number, f"{ours.full_name}.{field.name} renumbered"
        assert field.type == other.type, f"{ours.full_name}.{field.name} changed type"
        assert field.is_repeated == other.is_repeated, f"{ours.full_name}.{field.name} label"
        if field.message_type is not None:
            assert field.message_type.full_name == other.message_type.full_name
        if field.containing_oneof is not None:
            assert other.containing_oneof is not None
            assert field.containing_oneof.name == other.containing_oneof.name
    for nested in ours.nested_types:
        _compare(nested, theirs.nested_types_by_name[nested.name])
    for enum in ours.enum_types:
        their_enum = theirs.enum_types_by_name[enum.name]
        for value in enum.values:
            assert their_enum.values_by_name[value.name].number == value.number


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(grpc_service_pb2, triton_service), (model_config_pb2, triton_config)],
    ids=["grpc_service", "model_config"],
)
def test_every_message_matches_triton(ours, theirs):
    assert ours.DESCRIPTOR.package == theirs.DESCRIPTOR.package == "inference"
    for name, message in ours.DESCRIPTOR.message_types_by_name.items():
        _compare(message, theirs.DESCRIPTOR.message_types_by_name[name])
    for name, enum in ours.DESCRIPTOR.enum_types_by_name.items():
        for value in enum.values:
            assert theirs.DESCRIPTOR.enum_types_by_name[name].values_by_name[value.name].number == (
                value.number
            )


def test_service_methods_match_triton():
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert len(ours.methods) == 12
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
        assert method.client_streaming == other.client_streaming
        assert method.server_streaming == other.server_streaming


def test_generated_code_is_fresh():
    result = subprocess.run(
        [sys.executable, "-m", "serving.codegen", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_codegen_check_detects_stale_code(tmp_path):
    from serving import codegen

    out = tmp_path / "_proto"
    codegen.generate(out)
    assert codegen.check(out) == []
    (out / "grpc_service_pb2.py").write_text("# edited by hand\n")
    (out / "extra_pb2.py").write_text("")
    assert codegen.check(out) == ["extra_pb2.py", "grpc_service_pb2.py"]
