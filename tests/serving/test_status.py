"""Status codes are mapped in one place; unknown failures become INTERNAL with a traceback."""

from __future__ import annotations

import logging

import grpc
import pytest

from serving import errors
from serving.status import GRPC_CODE, status_of


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidInputError("m", "bad", tensor="t", expected=1, got=2), "INVALID_ARGUMENT"),
        (errors.MalformedRequestError("not JSON"), "INVALID_ARGUMENT"),
        (errors.InvalidNameError("model name", "../x"), "INVALID_ARGUMENT"),
        (errors.ModelNotFoundError("m", ["a"]), "NOT_FOUND"),
        (errors.VersionNotFoundError("m", "7", ["1"]), "NOT_FOUND"),
        (errors.ModelUnavailableError("m", "loading"), "UNAVAILABLE"),
        (errors.ServerUnavailableError("shutting down"), "UNAVAILABLE"),
        (errors.QueueFullError("m", 10), "RESOURCE_EXHAUSTED"),
        (errors.DeadlineExceededError("m"), "DEADLINE_EXCEEDED"),
        (errors.UnauthenticatedError("no token"), "UNAUTHENTICATED"),
        (errors.InferenceFailedError("m", "1", "boom"), "INTERNAL"),
    ],
)
def test_each_error_has_its_status(exc, code):
    status = status_of(exc)
    assert status.code.name == code
    assert status.message == str(exc)


@pytest.mark.parametrize(
    ("exc", "http"),
    [  # Triton's HTTP mapping of each gRPC code the server uses
        (errors.InvalidInputError("m", "bad"), 400),
        (errors.ModelNotFoundError("m"), 404),
        (errors.ServerUnavailableError("starting"), 503),
        (errors.QueueFullError("m", 10), 429),
        (errors.DeadlineExceededError("m"), 504),
        (errors.UnauthenticatedError("no token"), 401),
        (errors.InferenceFailedError("m", "1", "boom"), 500),
        (RuntimeError("unexpected"), 500),
    ],
)
def test_http_status_follows_the_grpc_code(exc, http):
    assert status_of(exc).http == http


def test_every_error_class_is_mapped():
    classes = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ServingError)
    ]
    for cls in classes:
        if cls is errors.ServingError:
            continue
        assert any(issubclass(cls, mapped) for mapped in GRPC_CODE), cls


def test_messages_name_model_tensor_expected_and_got():
    message = str(errors.InvalidInputError("digits", "wrong", tensor="input", expected=4, got=5))
    assert message == "model 'digits' tensor 'input': wrong (expected 4, got 5)"


def test_unknown_exception_is_internal_and_logged_with_traceback(caplog):
    with caplog.at_level(logging.ERROR, logger="serving"):
        status = status_of(KeyError("secret internals"))
    assert status.code == grpc.StatusCode.INTERNAL
    assert "secret internals" not in status.message
    assert caplog.records[-1].exc_info is not None
