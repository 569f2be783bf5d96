"""Secrets never survive into text a person or a log sees."""

from __future__ import annotations

import logging

import pytest
from cathouse_harness.errors import ConfigError, HarnessError, NeonAPIError
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.redact import Secret, redact_url, register_secret, scrub


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p%40ss%3Aw0rd@h:5432/db?sslmode=require",
         "postgresql://u:***@h:5432/db?sslmode=require"),
        ("postgresql+asyncpg://cathouse_owner:x@127.0.0.1:6001/cathouse",
         "postgresql+asyncpg://cathouse_owner:***@127.0.0.1:6001/cathouse"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        # a port that is not a number: still redacted, not an exception
        ("postgresql://u:secret-pw@h:12ab/db", "postgresql://u:***@h:12ab/db"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_scrub_removes_registered_secrets_and_their_encoded_form() -> None:
    register_secret("pa ss/w@rd-123")
    text = "failed for pa ss/w@rd-123 and pa%20ss%2Fw%40rd-123 and Bearer napi_xyz123"
    cleaned = scrub(text)
    assert "pa ss/w@rd-123" not in cleaned
    assert "pa%20ss%2Fw%40rd-123" not in cleaned
    assert "napi_xyz123" not in cleaned


def test_secret_repr_hides_value() -> None:
    secret = Secret("napi_supersecret_1")
    assert "supersecret" not in repr(secret)
    assert secret.reveal() == "napi_supersecret_1"


def test_errors_scrub_messages() -> None:
    register_secret("hunter2-password")
    errors: list[HarnessError] = [
        HarnessError("connect to postgresql://a:hunter2-password@h/db failed"),
        ConfigError("bad value hunter2-password", key="k", source="env"),
        NeonAPIError("token hunter2-password rejected", status=401),
    ]
    for error in errors:
        assert "hunter2-password" not in str(error)
        assert "hunter2-password" not in repr(error)


def test_log_records_are_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    register_secret("log-secret-value")
    logger = get_logger("test")
    with caplog.at_level(logging.INFO, logger="cathouse_harness"):
        logger.info("using %s for postgresql://u:pw123@h/db", "log-secret-value")
    assert "log-secret-value" not in caplog.text
    assert "pw123" not in caplog.text


def test_scrub_masks_a_secret_cut_short_beside_dots() -> None:
    register_secret("Zq8wX1J60avrsjHHzd")
    text = "assert 'postgresql:/...lmode=require' == 'postgresql:/...1J60avrsjHHzd' and 'Zq8w...'"
    assert scrub(text) == (
        "assert 'postgresql:/...lmode=require' == 'postgresql:/...***' and '***...'"
    )
