"""Does batching pay? One ``plan`` call on B problems against B calls on one problem each, per planner.

For the residual-MLP world model of benchmarks/planners.py (D = 32, A = 10, 3 x 256 hidden) and
problems from ``reachable_problems``, every planner of the registry plans B problems in one call
and the same B problems one call each (same options, same seed for every call; a short fixed
budget; best of two, batched and looped interleaved so that both see the same machine). Prints a
Markdown table with the milliseconds per problem (wall time at torch's threads, or with ``--clock
cpu`` the CPU time of one thread: the work, which a machine shared with other jobs measures far
more steadily than the wall clock), the ratio batched / looped (below 1: the
batch pays) and the largest difference between a problem's batched and looped plan (model units;
0 where a planner's plan does not depend on its batch), then the machine and its load average.

    python benchmarks/batching.py                   # B = 1, 4, 16, 64 (a few minutes on 2 cores)
    python benchmarks/batching.py --clock cpu       # CPU time on one thread
    python benchmarks/batching.py --quick           # a smoke test: B = 1, 2 and tiny budgets
    python benchmarks/batching.py --batches 16 --planners cem,mppi
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from wmplan.platform.models import ResidualMLP
from wmplan.platform.planners import PLANNERS, make_planner
from wmplan.platform.problems import reachable_problems

# A short budget per planner, about the same time per call on one problem; GRASP's includes one sync
# phase (its default cadence is every 50 iterations), as a real run would.
BUDGET: dict[str, dict[str, Any]] = {
    "grasp": dict(iterations=50),
    "gd": dict(iterations=20),
    "cem": dict(iterations=3),
    "latco": dict(iterations=20),
    "mppi": dict(iterations=2),
}
QUICK: dict[str, dict[str, Any]] = {
    "grasp": dict(iterations=4, sync_interval=2, sync_steps=2),
    "gd": dict(iterations=2),
    "cem": dict(iterations=2, samples=64, elites=8),
    "latco": dict(iterations=2),
    "mppi": dict(iterations=2, samples=64, elites=8),
}


@dataclass(frozen=True)
class Row:
    """One planner at one batch size."""

    planner: str
    iterations: int
    batch: int
    batched_ms: float
    """Milliseconds per problem of one call on the whole batch (best of the repeats)."""
    looped_ms: float
    """Milliseconds per problem of one call per problem (best of the repeats)."""
    plan_diff: float
    """Largest ``|batched - looped|`` over the plans' actions, model units."""

    @property
    def ratio(self) -> float:
        return self.batched_ms / self.looped_ms


def machine() -> str:
    """The CPU's name, its cores, torch's version and threads."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} threads"


def measure(name: str, model: ResidualMLP, batch: int, horizon: int, options: dict[str, Any], *, repeats: int, seed: int = 0,
            clock: Callable[[], float] = time.perf_counter) -> Row:
    """Time ``name`` on ``batch`` problems in one call and in ``batch`` calls (best of ``repeats`` each) with ``clock``."""
    planner = make_planner(name, horizon=horizon, **options)
    start, goal = reachable_problems(model, batch, horizon, seed=seed)
    planner.replace(iterations=1).plan(model, start[:1], goal[:1], seed=seed)  # warm-up
    batched = looped = float("inf")
    for _ in range(repeats):
        t0 = clock()
        whole = planner.plan(model, start, goal, seed=seed)
        batched = min(batched, clock() - t0)
        t0 = clock()
        alone = [planner.plan(model, start[i : i + 1], goal[i : i + 1], seed=seed) for i in range(batch)]
        looped = min(looped, clock() - t0)
    diff = (whole.actions - torch.cat([r.actions for r in alone])).abs().max().item()
    return Row(name, planner.options.iterations, batch, 1000 * batched / batch, 1000 * looped / batch, diff)


def table(rows: Sequence[Row], *, clock: str = "wall") -> str:
    unit = "ms/problem" if clock == "wall" else "CPU ms/problem"
    lines = [
        f"| planner | iterations | B | batched {unit} | looped {unit} | batched / looped | max plan diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.planner} | {r.iterations} | {r.batch} | {r.batched_ms:.1f} | {r.looped_ms:.1f} | {r.ratio:.2f} | {r.plan_diff:.1e} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batches", default="1,4,16,64", help="batch sizes B, comma separated")
    parser.add_argument("--planners", default=",".join(PLANNERS), help="planners of the registry, comma separated")
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs, batched and looped each")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default; --clock cpu uses 1)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: wall time; cpu: CPU time of the one thread torch then runs on (the work)")
    parser.add_argument("--quick", action="store_true", help="B = 1, 2, tiny budgets, one run: a smoke test")
    args = parser.parse_args(argv)
    if args.clock == "cpu":
        torch.set_num_threads(1)  # every op runs on the calling thread, so its CPU time is all the work
    elif args.threads > 0:
        torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    names = [n for n in args.planners.split(",") if n]
    unknown = [n for n in names if n not in BUDGET]
    if unknown:
        parser.error(f"unknown planners {unknown}; choose from {sorted(BUDGET)}")
    batches = [1, 2] if args.quick else [int(b) for b in args.batches.split(",")]
    budgets = QUICK if args.quick else BUDGET
    repeats = 1 if args.quick else args.repeats
    model = ResidualMLP(32, 10, hidden=256, depth=3, seed=0)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    rows = [measure(n, model, b, args.horizon, budgets[n], repeats=repeats, clock=clock) for n in names for b in batches]
    print(f"`python benchmarks/batching.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"))
    print(f"model: residual MLP, D = 32, A = 10, 3 x 256 hidden; H = {args.horizon}; seed 0 for every call; best of {repeats}\n")
    print(table(rows, clock=args.clock))
    load_after = os.getloadavg()
    print(f"\nmachine: {machine()}; {time.perf_counter() - t0:.0f} s; load average (1, 5, 15 min) "
          f"{' '.join(f'{x:.2f}' for x in load_before)} before, {' '.join(f'{x:.2f}' for x in load_after)} after", flush=True)
    return rows


if __name__ == "__main__":
    main()
