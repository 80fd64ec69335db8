"""A/B of the library across a refactor: ``python -m benchmarks.ab --base REV [--head REV|worktree]``.

The base revision (and the head, unless it is the working tree) is checked out into a temporary git worktree.
Each round then runs the throughput contestant of ``benchmarks/worker.py`` three times, in rotating order
(bare, base, head; then base, head, bare; ...), each against a fresh emulator and in a fresh process pinned to
the client core. Every tree runs the *current* tree's ``worker.py`` (copied into the worktrees), so only the
library differs, and each worker reports which ``batch_dealloc_async`` it imported: a library from any other
tree fails the run. The figure is client CPU seconds per 1,000 deallocations; the verdict is the median of the
per-round ratios (head/base, head/bare, base/bare). The table is printed and written to
``benchmarks/out/ab.md``; the worktrees are removed at the end, failure or not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import filecmp
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # `python benchmarks/ab.py` as well as `python -m benchmarks.ab`
    sys.path.insert(0, str(HERE.parent))

from benchmarks.run import (  # noqa: E402
    ROOT,
    THROUGHPUT_EMULATOR,
    cores,
    cpu_per_1000,
    one_run,
    spread,
    throughput_spec,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import FrameType

WORKTREE = "worktree"
LABELS = ("bare", "base", "head")
RATIOS = {"head/base": ("head", "base"), "head/bare": ("head", "bare"), "base/bare": ("base", "bare")}


def git(*args: str) -> str:
    """A read-only git command in this repository (or ``worktree add/remove``); its stripped stdout."""
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)  # noqa: S607
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def resolve(rev: str) -> str:
    """The commit a revision names, or a clear error."""
    try:
        return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except RuntimeError:
        raise SystemExit(f"error: {rev!r} is not a commit of this repository") from None


class Trees:
    """Temporary worktrees, each given the current ``benchmarks/worker.py``; removed on exit, whatever happened."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="batch-dealloc-ab-"))
        self.added: list[Path] = []

    def add(self, name: str, commit: str) -> Path:
        path = self.root / name
        git("worktree", "add", "--detach", "--quiet", str(path), commit)
        self.added.append(path)
        bench = path / "benchmarks"
        bench.mkdir(exist_ok=True)
        if not (bench / "__init__.py").exists():
            shutil.copyfile(HERE / "__init__.py", bench / "__init__.py")
        shutil.copyfile(HERE / "worker.py", bench / "worker.py")  # only the library differs between trees
        if not filecmp.cmp(HERE / "worker.py", bench / "worker.py", shallow=False):
            raise RuntimeError(f"could not copy worker.py into {path}")
        return path

    def __enter__(self) -> Trees:  # noqa: PYI034 (final class)
        return self

    def __exit__(self, *exc: object) -> None:
        for path in self.added:
            try:
                git("worktree", "remove", "--force", str(path))
            except RuntimeError as error:
                print(f"warning: {error}; remove it with: git worktree remove --force {path}", file=sys.stderr)
        shutil.rmtree(self.root, ignore_errors=True)


def _terminate(signum: int, frame: FrameType | None) -> NoReturn:  # noqa: ARG001 (signal's signature)
    raise SystemExit(128 + signum)  # unwinds through Trees.__exit__, so a killed run leaves no worktree


def _describe(commit: str) -> str:
    return git("log", "-1", "--format=%h %s", commit)


def run_rounds(trees: dict[str, Path], rounds: int, count: int) -> list[dict[str, Any]]:
    """Every round: bare, base and head in rotating order, each against a fresh emulator."""
    client, server = cores()
    specs = {
        "bare": throughput_spec(client, contestant="bare"),
        "base": throughput_spec(client, contestant="ours"),
        "head": throughput_spec(client, contestant="ours"),
    }
    done = []
    for number in range(rounds):
        order = LABELS[number % 3 :] + LABELS[: number % 3]
        results = {}
        for label in order:
            result = one_run(count, THROUGHPUT_EMULATOR, specs[label], server, trees[label])
            results[label] = result
            print(
                f"  round {number + 1} {label}: {cpu_per_1000(result):.3f} CPU s/1000, "
                f"{result['nodes'] / result['wall']:.0f} requests/s, lost {result['failed']}",
                flush=True,
            )
        done.append({"order": order, "results": results})
    return done


def report(rounds: list[dict[str, Any]], header: list[str]) -> Iterator[str]:
    yield "# A/B: CPU s per 1,000 deallocations"
    yield ""
    yield from header
    yield ""
    yield "| round | order | bare | base | head | head/base | head/bare | base/bare | nodes lost |"
    yield "|---|---|---|---|---|---|---|---|---|"
    ratios: dict[str, list[float]] = {name: [] for name in RATIOS}
    raw: dict[str, list[float]] = {label: [] for label in LABELS}
    for number, one in enumerate(rounds, 1):
        cpu = {label: cpu_per_1000(one["results"][label]) for label in LABELS}
        for label in LABELS:
            raw[label].append(cpu[label])
        cells = []
        for name, (top, bottom) in RATIOS.items():
            ratios[name].append(cpu[top] / cpu[bottom])
            cells.append(f"{ratios[name][-1]:.3f}")
        lost = sum(r["failed"] for r in one["results"].values())
        yield (
            f"| {number} | {' '.join(one['order'])} | {cpu['bare']:.3f} | {cpu['base']:.3f} | {cpu['head']:.3f} "
            f"| {' | '.join(cells)} | {lost} |"
        )
    yield ""
    yield "| ratio | median of per-round ratios | min | max |"
    yield "|---|---|---|---|"
    for name, values in ratios.items():
        s = spread(values)
        yield f"| {name} | **{s['median']:.3f}** | {s['min']:.3f} | {s['max']:.3f} |"
    yield ""
    medians = ", ".join(f"{label} {spread(values)['median']:.3f}" for label, values in raw.items())
    yield f"- Medians of the raw CPU s / 1,000: {medians}."
    lost = sum(r["failed"] for one in rounds for r in one["results"].values())
    if lost:
        yield f"- **{lost} nodes lost**: a contestant failed nodes, so its CPU figure is not comparable."
    yield ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__)
    parser.add_argument("--base", required=True, help="git revision of the base library")
    parser.add_argument("--head", default=WORKTREE, help="git revision of the head library, or 'worktree' (default)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--count", type=int, default=20000, help="deallocations per run (default 20000)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.count < 1:
        parser.error("--rounds and --count must be at least 1")
    base = resolve(args.base)
    head = None if args.head == WORKTREE else resolve(args.head)
    signal.signal(signal.SIGTERM, _terminate)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with Trees() as worktrees:
        trees = {"bare": ROOT, "base": worktrees.add("base", base), "head": ROOT}
        if head is None:
            changed = git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no").splitlines()
            head_text = f"the working tree {ROOT} (HEAD {_describe('HEAD')}; {len(changed)} files changed)"
        else:
            trees["head"] = worktrees.add("head", head)
            head_text = f"`{args.head}` = {_describe(head)}"
        print(f"base {_describe(base)}; head {head_text}", flush=True)
        rounds = run_rounds(trees, args.rounds, args.count)
    client, _ = cores()
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    header = [
        f"- Date: {started}; command: `python -m benchmarks.ab {argv_text}`",
        f"- Base: `{args.base}` = {_describe(base)}; head: {head_text}",
        (
            f"- {args.count} deallocations per run, concurrency 64, {args.rounds} rounds, each a fresh emulator; "
            f"client and emulator pinned to one core each: {client is not None}"
        ),
        (
            "- base and head run `deallocate_nodes`; bare is the bare aiohttp loop. Every tree ran this tree's "
            "`benchmarks/worker.py`, and each worker's `batch_dealloc_async.__file__` was checked to be in its tree."
        ),
    ]
    text = "\n".join(report(rounds, header))
    out = HERE / "out" / "ab.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
