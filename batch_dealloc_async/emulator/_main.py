"""The emulator as a process: ``python -m batch_dealloc_async.emulator`` (and ``batch-dealloc emulator``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import TYPE_CHECKING

from . import BatchEmulator, EmulatorConfig, FaultConfig

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["add_arguments", "build_parser", "config_from", "main", "serve"]


def _pool(text: str) -> tuple[str, int]:
    name, sep, count = text.partition("=")
    try:
        size = int(count)
    except ValueError:
        size = -1
    if not sep or not name or size < 0:
        raise argparse.ArgumentTypeError(f"--pool takes NAME=COUNT, e.g. pool-a=2000; got {text!r}")
    return name, size


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


def _state_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        state, sep, weight = part.strip().partition("=")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not sep or not state or value < 0:
            message = f"--state-mix takes STATE=WEIGHT,..., e.g. idle=0.6,running=0.4; got {text!r}"
            raise argparse.ArgumentTypeError(message)
        mix[state] = value
    return mix


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The emulator's options (shared with ``batch-dealloc emulator``)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 for a free one)")
    parser.add_argument(
        "--pool", type=_pool, action="append", default=[], metavar="NAME=COUNT", help="a pool and its node count"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--throttle-rps", type=float, help="requests per second before throttling (default: none)")
    parser.add_argument("--throttle-burst", type=int, default=30, help="token bucket size (default 30)")
    parser.add_argument("--throttle-status", type=int, choices=(429, 503), default=429)
    parser.add_argument("--fault-rate", type=_fraction, default=0.0, help="share of requests with an injected fault")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--deallocate-delay", type=float, default=2.0, help="seconds in 'deallocating' (default 2)")
    parser.add_argument(
        "--state-mix", type=_state_mix, help="initial states, e.g. idle=0.6,running=0.4 (default: a realistic mix)"
    )
    parser.add_argument("--account-name", default="emulator")
    parser.add_argument("--account-key", help="base64 key (default: derived from the seed)")
    parser.add_argument("--no-auth", action="store_true", help="accept requests without credentials")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m batch_dealloc_async.emulator``."""
    parser = argparse.ArgumentParser(
        prog="python -m batch_dealloc_async.emulator", description="Run the local Azure Batch emulator."
    )
    add_arguments(parser)
    return parser


def config_from(args: argparse.Namespace) -> EmulatorConfig:
    """The configuration the options describe."""
    pools = dict(args.pool) or {"pool-1": 100}
    faults = FaultConfig.mixed(args.fault_rate, latency=args.latency)
    extra = {"state_mix": args.state_mix} if args.state_mix else {}
    return EmulatorConfig(
        **extra,
        pools=pools,
        seed=args.seed,
        account_name=args.account_name,
        account_key=args.account_key,
        deallocate_delay=args.deallocate_delay,
        auth=not args.no_auth,
        throttle_rps=args.throttle_rps,
        throttle_burst=args.throttle_burst,
        throttle_status=args.throttle_status,
        faults=faults,
    )


async def serve(config: EmulatorConfig, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, printing the endpoint and the key to paste."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with BatchEmulator(config, host=host, port=port) as emu:
        sizes = ", ".join(f"{pool} ({count} nodes)" for pool, count in config.pools.items())
        print(f"Batch emulator: pools {sizes}")
        print(f"  export BATCH_ACCOUNT_NAME={emu.account_name}")
        print(f"  export BATCH_ACCOUNT_KEY={emu.account_key}")
        print(f"  batch-dealloc deallocate --endpoint {emu.endpoint} --pool {next(iter(config.pools))} --all")
        print(f"listening on {emu.endpoint}", flush=True)
        await stop.wait()
    print("stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config, args.host, args.port))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
