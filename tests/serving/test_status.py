"""Status codes are mapped in one place; unknown failures become INTERNAL with a traceback."""

from __future__ import annotations

import logging

import grpc
import pytest

from serving import errors
from serving.status import STATUS_OF, status_of


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidInputError("m", "bad", tensor="t", expected=1, got=2), "INVALID_ARGUMENT"),
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
    got, message = status_of(exc)
    assert got.name == code
    assert message == str(exc)


def test_every_error_class_is_mapped():
    classes = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ServingError)
    ]
    for cls in classes:
        if cls is errors.ServingError:
            continue
        assert any(issubclass(cls, mapped) for mapped in STATUS_OF), cls


def test_messages_name_model_tensor_expected_and_got():
    message = str(errors.InvalidInputError("digits", "wrong", tensor="input", expected=4, got=5))
    assert message == "model 'digits' tensor 'input': wrong (expected 4, got 5)"


def test_unknown_exception_is_internal_and_logged_with_traceback(caplog):
    with caplog.at_level(logging.ERROR, logger="serving"):
        code, message = status_of(KeyError("secret internals"))
    assert code == grpc.StatusCode.INTERNAL
    assert "secret internals" not in message
    assert caplog.records[-1].exc_info is not None
