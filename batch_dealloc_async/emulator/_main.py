"""The emulator as a process: ``python -m batch_dealloc_async.emulator`` and ``batch-dealloc emulator``.

Both take their options from :func:`add_arguments` and build the configuration with :func:`config_from`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import TYPE_CHECKING

from ._config import OUTAGE_KINDS, EmulatorConfig, FaultConfig, Outage
from ._emulator import BatchEmulator

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


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not whole seconds >= 0")
    return value


def _schedule(text: str) -> tuple[tuple[float, float | None], ...]:
    steps: list[tuple[float, float | None]] = []
    for part in text.split(","):
        at, sep, rate = part.strip().partition(":")
        try:
            step = (float(at), None if rate.strip().lower() == "none" else float(rate))
        except ValueError:
            step = None
        if not sep or step is None:
            message = f"--throttle-schedule takes AT:RATE,..., e.g. 0:600,5:150,15:none; got {text!r}"
            raise argparse.ArgumentTypeError(message)
        steps.append(step)
    return tuple(steps)


def _outage(text: str) -> Outage:
    start, duration, kind = ([*text.split(":", 2), "", ""])[:3]
    try:
        return Outage(float(start), float(duration), kind)  # type: ignore[arg-type] # the kind is checked by Outage
    except ValueError:
        kinds = " or ".join(sorted(OUTAGE_KINDS))
        raise argparse.ArgumentTypeError(
            f"--outage takes START:DURATION:KIND (KIND {kinds}), e.g. 10:5:refuse; got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to ``parser``: one definition for both entry points.

    ``python -m batch_dealloc_async.emulator`` and ``batch-dealloc emulator`` both call this; build the
    configuration from the parsed namespace with :func:`config_from`.

    Args:
        parser: The parser (or subparser) to add them to.
    """
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 for a free one)")
    parser.add_argument(
        "--pool", type=_pool, action="append", default=[], metavar="NAME=COUNT", help="a pool and its node count"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--throttle-rps", type=float, help="requests per second before throttling (default: none)")
    parser.add_argument("--throttle-burst", type=int, default=30, help="token bucket size (default 30)")
    parser.add_argument(
        "--throttle-window",
        type=float,
        metavar="SECONDS",
        help="a window limiter instead of the token bucket: at most the rate times SECONDS requests per window",
    )
    parser.add_argument(
        "--throttle-sliding", action="store_true", help="with --throttle-window: a sliding window, not fixed ones"
    )
    parser.add_argument("--throttle-status", type=int, choices=(429, 503), default=429)
    parser.add_argument("--fault-rate", type=_fraction, default=0.0, help="share of requests with an injected fault")
    parser.add_argument(
        "--throttle-schedule",
        type=_schedule,
        default=(),
        metavar="AT:RATE,...",
        help="token bucket rate by run time, e.g. 0:600,5:150,15:600 (rate 'none': unlimited); replaces --throttle-rps",
    )
    parser.add_argument(
        "--server-busy", type=_fraction, default=0.0, metavar="P", help="share of requests answered 503 ServerBusy"
    )
    parser.add_argument(
        "--server-busy-retry-after",
        type=_seconds,
        metavar="N",
        help="Retry-After seconds on those 503s (default: no header)",
    )
    parser.add_argument(
        "--too-many-requests",
        type=_fraction,
        default=0.0,
        metavar="P",
        help="share of requests answered 429 TooManyRequests",
    )
    parser.add_argument(
        "--too-many-requests-retry-after",
        type=_seconds,
        default=1,
        metavar="N",
        help="Retry-After seconds on those 429s (default 1)",
    )
    parser.add_argument(
        "--outage",
        type=_outage,
        action="append",
        default=[],
        metavar="START:DURATION:KIND",
        help="an outage window of run time, KIND error_500 or refuse (repeatable)",
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument(
        "--latency-before", type=float, default=0.0, metavar="S", help="seconds a request travels before processing"
    )
    parser.add_argument("--deallocate-delay", type=float, default=2.0, help="seconds in 'deallocating' (default 2)")
    parser.add_argument(
        "--start-task-failure",
        type=_fraction,
        default=0.0,
        metavar="P",
        help="share of started nodes ending starttaskfailed",
    )
    parser.add_argument(
        "--timeline-bin", type=float, default=0.1, metavar="S", help="seconds per bin of the stats' timeline"
    )
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
    """The configuration the options of :func:`add_arguments` describe.

    Args:
        args: The parsed options.

    Returns:
        The configuration.

    Raises:
        ValueError: A value the configuration refuses (e.g. a throttle schedule whose times do not ascend).
    """
    pools = dict(args.pool) or {"pool-1": 100}
    faults = FaultConfig.mixed(
        args.fault_rate,
        latency=args.latency,
        latency_before=args.latency_before,
        server_busy=args.server_busy,
        server_busy_retry_after=args.server_busy_retry_after,
        too_many_requests=args.too_many_requests,
        too_many_requests_retry_after=args.too_many_requests_retry_after,
    )
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
        throttle_window=args.throttle_window,
        throttle_sliding=args.throttle_sliding,
        throttle_status=args.throttle_status,
        throttle_schedule=args.throttle_schedule,
        outages=args.outage,
        start_task_failure=args.start_task_failure,
        timeline_bin=args.timeline_bin,
        faults=faults,
    )


async def serve(config: EmulatorConfig, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, printing the endpoint and the key to paste.

    Args:
        config: The configuration.
        host: The address to bind.
        port: The port (0: a free one).

    Raises:
        OSError: The address cannot be bound.
    """
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
