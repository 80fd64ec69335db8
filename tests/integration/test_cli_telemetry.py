"""The CLI's logs and telemetry as a subprocess: --log-format json, --log-level, and --otel (exporting, or refused)."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from typing import Final

import pytest
from aiohttp import web

from batch_dealloc_async.emulator import BatchEmulator
from tests.integration.test_cli import env_for, run_cli

BLOCK_EXPORTER: Final = """
import importlib.abc, sys

class NoExporter(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry.exporter" or name.startswith("opentelemetry.exporter."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, NoExporter())
from batch_dealloc_async.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _exporter_installed() -> bool:
    try:
        importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    except ImportError:
        return False
    return True


@pytest.fixture
async def emu():
    async with BatchEmulator(pools={"p": 40}, seed=8) as emulator:
        yield emulator


def deallocate(emu: BatchEmulator, *options: str) -> list[str]:
    return [*options, "deallocate", "--endpoint", emu.endpoint, "--pool", "p", "--all", "--output", "json"]


@pytest.mark.parametrize("level", [["--log-level", "info"], ["--debug"]])
async def test_json_logs_are_one_object_per_stderr_line(emu, level) -> None:
    """--log-format json: every stderr line is a JSON object; the run's start and end are there, with their extras."""
    code, out, err = await run_cli(*deallocate(emu, "--log-format", "json", *level), env=env_for(emu))
    assert code == 0
    assert len(json.loads(out)["outcomes"]) == 40
    records = [json.loads(line) for line in err.splitlines()]
    assert records
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    bulk = [r for r in records if r["logger"] == "batch_dealloc_async._bulk"]
    assert [r["message"][:25] for r in bulk] == ["bulk deallocate run start", "bulk deallocate run ended"]
    assert bulk[0]["pool_ids"] == ["p"]
    assert sum(bulk[1]["counts"].values()) == 40
    debug = [r for r in records if r["level"] == "DEBUG" and r["logger"] == "batch_dealloc_async._transport"]
    assert bool(debug) == (level == ["--debug"])


async def test_a_usage_error_is_a_json_record_too(emu) -> None:
    """With JSON logs, the CLI's own error message is one more JSON record on stderr (exit 2)."""
    code, _, err = await run_cli(
        "--log-format", "json", "deallocate", "--endpoint", "ftp://x", "--pool", "p", "--all", env=env_for(emu)
    )
    assert code == 2
    (record,) = [json.loads(line) for line in err.splitlines()]
    assert (record["level"], record["logger"]) == ("ERROR", "batch_dealloc_async.cli")
    assert record["message"].startswith("error: endpoint")


@pytest.mark.parametrize(
    ("option", "info"), [([], False), (["--log-level", "INFO"], True), (["--log-level", "ERROR"], False)]
)
async def test_log_level_chooses_what_reaches_stderr(emu, option, info) -> None:
    """The default (WARNING) and ERROR keep the run's INFO lines off stderr; --log-level INFO shows them as text."""
    code, _, err = await run_cli(*deallocate(emu, *option), "--quiet", env=env_for(emu))
    assert code == 0
    assert ("INFO batch_dealloc_async._bulk: bulk deallocate run started: pool p" in err) is info


async def test_otel_without_the_exporter_is_a_usage_error_naming_the_package(emu) -> None:
    """--otel with opentelemetry-exporter-otlp missing exits 2 and says what to install."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        BLOCK_EXPORTER,
        *deallocate(emu, "--otel"),
        env=env_for(emu),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert "--otel needs opentelemetry-exporter-otlp (" in err.decode()
    assert "batch-dealloc-async[otlp]" in err.decode()
    assert emu.stats.count("deallocate") == 0


async def test_otel_exports_traces_and_metrics_over_otlp_when_installed(emu) -> None:
    """--otel sends the run's spans and metrics to the OTLP endpoint of OTEL_*; without the exporter it exits 2."""
    received: list[tuple[str, int]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append((request.path, len(await request.read())))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/{signal}", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        env = env_for(
            emu,
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_SERVICE_NAME="cli-test",
        )
        code, _, err = await run_cli(*deallocate(emu, "--otel"), env=env)
    finally:
        await runner.cleanup()
    if _exporter_installed():
        assert code == 0, err
        paths = {path for path, size in received if size > 0}
        assert paths == {"/v1/traces", "/v1/metrics"}
    else:
        assert code == 2
        assert "pip install 'batch-dealloc-async[otlp]'" in err
