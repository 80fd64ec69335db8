"""Logs an operator can follow: a bulk run's start and end, every attempt with both ids, header values allow-listed."""

from __future__ import annotations

import json
import logging
import sys
from typing import Final

import pytest

from batch_dealloc_async._transport import loggable_headers
from batch_dealloc_async.cli._telemetry import JsonFormatter
from tests.unit.fake_batch import FakeBatch, error_body

PLANTED: Final = "planted-header-value-0xC0FFEE"
POOL: Final = {"n1": "idle", "n2": "running", "n3": "deallocated"}


async def test_a_bulk_run_logs_its_start_and_its_end_with_counts_at_info(make_client, caplog) -> None:
    """At INFO a run logs its start (pools) and its end (counts by status, requests), with the figures as extras."""
    caplog.set_level(logging.INFO, logger="batch_dealloc_async")
    async with make_client(exchange=FakeBatch({"pool1": dict(POOL)})) as client:
        await client.deallocate_pool("pool1")
    start, end = [r for r in caplog.records if r.name == "batch_dealloc_async._bulk"]
    assert start.levelno == end.levelno == logging.INFO
    assert start.getMessage() == "bulk deallocate run started: pool pool1"
    assert start.pool_ids == ["pool1"]
    assert "2 accepted, 1 skipped; 4 requests, 0 retries, 0 throttled" in end.getMessage()
    assert end.counts == {"accepted": 2, "skipped": 1}


async def test_every_attempt_is_logged_at_debug_with_both_request_ids(make_client, caplog) -> None:
    """503 then 202: one DEBUG line per attempt, each with the service's request-id and our client-request-id."""
    caplog.set_level(logging.DEBUG, logger="batch_dealloc_async")
    service = FakeBatch({"pool1": dict(POOL)}, {"n1": [(503, {}, error_body("InternalError"))]})
    async with make_client(exchange=service) as client:
        result = await client.deallocate_node("pool1", "n1")
    lines = [r.getMessage() for r in caplog.records if r.name == "batch_dealloc_async._transport"]
    attempts = [line for line in lines if " on attempt " in line]
    assert len(attempts) == 2
    for number, line in enumerate(attempts, 1):
        assert f"request-id svc-{number}" in line
        assert f"client-request-id {result.client_request_id}" in line


async def test_header_values_are_logged_only_from_the_allow_list(make_client, caplog) -> None:
    """Response headers outside the allow-list show REDACTED; no request header (Authorization) is ever logged."""
    caplog.set_level(logging.DEBUG)
    headers = {"Retry-After": "1", "x-ms-secret": PLANTED, "Set-Cookie": f"session={PLANTED}"}
    service = FakeBatch({"pool1": dict(POOL)}, {"n1": [(503, headers, error_body("ServerBusy"))]})
    async with make_client(exchange=service) as client:
        await client.deallocate_node("pool1", "n1")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "'Retry-After': '1'" in text
    assert "'x-ms-secret': 'REDACTED'" in text
    assert PLANTED not in text
    signatures = [sent.headers["Authorization"] for sent in service.sent]
    assert signatures
    assert not [s for s in signatures if s in text or s.split(":", 1)[1] in text]


@pytest.mark.parametrize(
    ("headers", "logged"),
    [
        (
            {"request-id": "r1", "Content-Type": "application/json"},
            {"request-id": "r1", "Content-Type": "application/json"},
        ),
        ({"Authorization": "SharedKey a:sig", "X-Other": "v"}, {"Authorization": "REDACTED", "X-Other": "REDACTED"}),
        ({"RETRY-AFTER": "5", "x-ms-retry-after-ms": "200"}, {"RETRY-AFTER": "5", "x-ms-retry-after-ms": "200"}),
    ],
)
def test_loggable_headers_keep_allow_listed_values_only(headers: dict[str, str], logged: dict[str, str]) -> None:
    """Allow-listed header names keep their values (any case); every other value is REDACTED."""
    assert loggable_headers(headers) == logged


def test_json_formatter_writes_one_object_per_record_with_extras_and_traceback() -> None:
    """A record becomes one JSON line: time, level, logger, message, its extras, and the traceback when there is one."""
    logger = logging.getLogger("batch_dealloc_async.test")
    try:
        int("boom")
    except ValueError:
        record = logger.makeRecord(
            logger.name, logging.ERROR, __file__, 1, "run %s", ("r1",), sys.exc_info(), extra={"counts": {"failed": 1}}
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert {k: data[k] for k in ("level", "logger", "message", "counts")} == {
        "level": "ERROR",
        "logger": "batch_dealloc_async.test",
        "message": "run r1",
        "counts": {"failed": 1},
    }
    assert data["time"].endswith("+00:00")
    assert "ValueError: invalid literal for int() with base 10: 'boom'" in data["exception"]
