"""Small shared pieces: durations, redaction, status normalisation, value coercion."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from opus_runner import redact
from opus_runner.builtins import coerce
from opus_runner.durations import format_duration, parse_duration
from opus_runner.models import normalise_status


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45s", 45), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), (12, 12), (1.5, 1.5), ("90", 90), ("2h", 7200), ("1d", 86400)],
)
def test_parse_duration(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 minutes", "", "m5", "-3", -1, True, None, "1h 30m", "5x"])
def test_parse_duration_refuses(bad) -> None:
    with pytest.raises(ValueError, match="expected a duration such as 45s, 5m, 1h30m"):
        parse_duration(bad)


def test_format_duration_round_trips() -> None:
    for seconds in (2.5, 45, 300, 5400, 3661):
        assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("raw", "norm"),
    [("IN PROGRESS", "IN_PROGRESS"), ("in_progress", "IN_PROGRESS"), ("Hitl-Pending", "HITL_PENDING"), ("completed", "COMPLETED"), ("", "UNKNOWN"), (None, "UNKNOWN"), ("Brand  New", "BRAND_NEW")],
)
def test_normalise_status(raw, norm) -> None:
    assert normalise_status(raw) == norm


def test_redact_masks_text_objects_and_log_records(caplog: pytest.LogCaptureFixture) -> None:
    redact.register("sk-unit-test-secret-value")
    redact.register("sk-unit")  # a secret inside another is masked without leaving a tail
    assert redact.mask("key=sk-unit-test-secret-value!") == "key=***!"
    assert redact.mask_obj({"a": ["sk-unit-test-secret-value"], "sk-unit": 1}) == {"a": ["***"], "***": 1}
    redact.register("ab")  # too short to be a secret: never masks ordinary words
    assert redact.mask("abc") == "abc"
    logger = logging.getLogger("opus_runner.test_redact")
    handler_filter = redact.MaskingFilter()
    logger.addFilter(handler_filter)
    with caplog.at_level(logging.INFO, logger="opus_runner.test_redact"):
        logger.info("sending %s", "sk-unit-test-secret-value")
    assert "sk-unit-test-secret-value" not in caplog.text and "sending ***" in caplog.text


class F:
    def __init__(self, type_: str) -> None:
        self.type = type_


def c(type_: str, value):
    return coerce.opus_coerce_value(F(type_), value, None)


@pytest.mark.parametrize(
    ("type_", "value", "sent"),
    [
        ("str", "x", "x"),
        ("str", 12, "12"),
        ("str", 12.0, "12"),
        ("float", 45.8, 45.8),
        ("float", "45.8", 45.8),
        ("float", "3", 3),
        ("float", 7, 7),
        ("bool", "Yes", True),
        ("bool", "0", False),
        ("bool", "FALSE", False),
        ("bool", True, True),
        ("date", dt.date(2026, 11, 3), "2026-11-03"),
        ("date", "2026-11-03", "2026-11-03"),
        ("date", "2026-11-03T10:00:00Z", "2026-11-03"),
        ("date", dt.datetime(2026, 1, 2, 3, 4), "2026-01-02"),
        ("array", [1, "a"], [1, "a"]),
        ("array", '["a", 2]', ["a", 2]),
        ("object", {"depth": 2}, {"depth": 2}),
        ("object", '{"depth": 2}', {"depth": 2}),
        ("file", "https://x/a.pdf", "https://x/a.pdf"),
        ("array_files", ["https://x/a.pdf"], ["https://x/a.pdf"]),
    ],
)
def test_coercion_table(type_, value, sent) -> None:
    out = c(type_, value)
    assert out == sent and type(out) is type(sent)


@pytest.mark.parametrize(
    ("type_", "value", "message"),
    [
        ("float", True, "booleans are not numbers"),
        ("float", "abc", "expected a number, found a string 'abc'"),
        ("float", "nan", "finite"),
        ("bool", "maybe", "expected true or false"),
        ("bool", 2, "expected true or false"),
        ("date", "03/11/2026", "expected a date as YYYY-MM-DD"),
        ("date", "2026-02-30", "real calendar date"),
        ("str", ["a"], "expected a string, found a list"),
        ("str", None, "expected a string"),
        ("array", "a,b", "not JSON"),
        ("array", '{"a": 1}', "JSON string holding a mapping"),
        ("object", [1], "expected a mapping"),
        ("array_files", [1], "expected a list of files"),
    ],
)
def test_coercion_refusals(type_, value, message) -> None:
    with pytest.raises(ValueError, match=message):
        c(type_, value)
