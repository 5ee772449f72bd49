"""Time per iteration of every planner against horizon, GRASP's sync share, and the speed levers.

For a small residual-MLP world model and a batch of problems, prints Markdown tables:

- ``time``: each planner's wall time per iteration (default options, a short fixed budget, best
  of two runs), its ratio to GRASP's, and the FLOP rate that GRASP's world-model calls achieve
  (FLOPs counted by torch's FLOP counter for one main iteration, forward and backward) as a
  fraction of this machine's dense matrix-multiply rate, measured in the same run;
- ``sync``: GRASP at its default options split into its lifted iterations (syncs off) and its
  sync phases (the rest), in ms per main iteration, the sync share of the total, and GRASP's
  total and lifted time against GD's;
- ``levers``: the planner options ``compile`` and ``precision='bfloat16'`` against the default
  path (ms per iteration after a warm-up call that compiles, the warm-up's seconds, and the final
  distance against the default plan's on the same seed).

    python benchmarks/planners.py                                  # all tables, CPU (or the GPU)
    python benchmarks/planners.py --tables sync --batch 16         # GRASP's sync share only
    python benchmarks/planners.py --tables levers --horizons 10,40 --planners gd,grasp
    python benchmarks/planners.py --device cuda --horizons 10,20,40,80,160
    OMP_NUM_THREADS=1 python benchmarks/planners.py --clock process   # on a busy CPU machine
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from wmplan.platform.demo import resolve_device
from wmplan.platform.models import ResidualMLP
from wmplan.platform.planners import PLANNERS, make_planner
from wmplan.platform.planners.grasp import lifted_loss
from wmplan.platform.problems import reachable_problems

# A short budget per planner: enough iterations for a stable per-iteration time. GRASP's includes
# two sync phases at its default cadence (every 50 iterations), as a real run would.
BUDGET = {"grasp": 100, "gd": 20, "cem": 3, "latco": 20, "mppi": 2}
CLOCK = {"wall": time.perf_counter, "process": time.process_time}
"""'wall': wall seconds (device synchronised); 'process': this process's CPU seconds, which other
processes on a busy machine disturb much less (a CPU-only measure: a GPU's work is not in it)."""
clock = CLOCK["wall"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, n: int = 2048, reps: int = 5) -> float:
    """Dense float32 matrix-multiply rate in FLOP/s (best of ``reps``)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def grasp_flops_per_iteration(model, start, goal, horizon: int) -> int:
    """FLOPs of one GRASP main iteration's world-model work (forward and backward)."""
    b, d = start.shape
    states = torch.zeros(b, horizon - 1, d, device=start.device, requires_grad=True)
    actions = torch.zeros(b, horizon, model.action_dim, device=start.device, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        loss, _, _ = lifted_loss(model, start, goal, states, actions, goal_weight=1.0, stop_state_grad=True)
        torch.autograd.grad(loss.sum(), [states, actions])
    return counter.get_total_flops()


def time_per_iteration(name: str, model, start, goal, horizon: int, *, runs: int = 2, **options: Any) -> float:
    """Best of ``runs`` wall times per iteration of ``name`` with ``options``, after a one-iteration warm-up."""
    planner = make_planner(name, horizon=horizon, **options)
    planner.replace(iterations=1).plan(model, start, goal, seed=0)  # warm-up
    return min(timed(planner, model, start, goal)[0] for _ in range(runs)) / planner.options.iterations


def timed(planner, model, start, goal) -> tuple[float, Any]:
    """Seconds of one plan call on :data:`clock`, and its result."""
    sync(start.device)
    t0 = clock()
    result = planner.plan(model, start, goal, seed=0)
    sync(start.device)
    return clock() - t0, result


def table_time(names: list[str], model, horizons: list[int], args: argparse.Namespace, device: torch.device, peak: float) -> None:
    header = "| H | " + " | ".join(f"{n} ms/it (x GRASP)" for n in names) + " | GRASP main it, no sync (ms) | GRASP GFLOP/s | of matmul peak |"
    print(header)
    print("|" + "---|" * (len(names) + 4))
    for h in horizons:
        start, goal = reachable_problems(model, args.batch, h, seed=0, device=device)
        per_it = {n: time_per_iteration(n, model, start, goal, h, iterations=BUDGET[n]) for n in names}
        main_it = time_per_iteration("grasp", model, start, goal, h, iterations=BUDGET["grasp"], sync_interval=0)
        rate = grasp_flops_per_iteration(model, start, goal, h) / main_it
        base = per_it.get("grasp", main_it)
        cells = " | ".join(f"{1000 * per_it[n]:.2f} ({per_it[n] / base:.1f})" for n in names)
        print(f"| {h} | {cells} | {1000 * main_it:.2f} | {rate / 1e9:.1f} | {100 * rate / peak:.1f}% |", flush=True)
    print()


def table_sync(model, horizons: list[int], args: argparse.Namespace, device: torch.device) -> None:
    """GRASP's lifted and sync time per main iteration (default options), beside GD's iteration."""
    interval = make_planner("grasp").options.sync_interval
    print(f"GRASP at its default options, {BUDGET['grasp']} iterations ({BUDGET['grasp'] // interval} sync phases), "
          f"best of {args.runs}; sync = total - lifted (syncs off), per main iteration\n")
    print("| H | GRASP total ms/it | lifted-only ms/it | sync-only ms/it | sync share | ms per sync phase | GD ms/it | "
          "GRASP / GD | lifted / GD |")
    print("|" + "---|" * 9)
    for h in horizons:
        start, goal = reachable_problems(model, args.batch, h, seed=0, device=device)
        total = time_per_iteration("grasp", model, start, goal, h, runs=args.runs, iterations=BUDGET["grasp"])
        lifted = time_per_iteration("grasp", model, start, goal, h, runs=args.runs, iterations=BUDGET["grasp"], sync_interval=0)
        gd = time_per_iteration("gd", model, start, goal, h, runs=args.runs, iterations=BUDGET["gd"])
        synced = max(total - lifted, 0.0)
        print(f"| {h} | {1000 * total:.2f} | {1000 * lifted:.2f} | {1000 * synced:.2f} | {100 * synced / total:.0f}% | "
              f"{1000 * synced * interval:.1f} | {1000 * gd:.2f} | {total / gd:.2f} | {lifted / gd:.2f} |", flush=True)
    print()


def table_levers(names: list[str], model, horizons: list[int], args: argparse.Namespace, device: torch.device) -> None:
    """Each planner with compile on and with bf16 against its default path."""
    print(f"ms per iteration (best of {args.runs}, after a warm-up call of one iteration, whose seconds include "
          "compiling); final distance: the mean over the batch, same seed\n")
    print("| planner | H | default ms/it | compile ms/it (x default) | compile warm-up (s) | bf16 ms/it (x default) | "
          "final distance default / compile / bf16 |")
    print("|" + "---|" * 7)
    for h in horizons:
        start, goal = reachable_problems(model, args.batch, h, seed=0, device=device)
        for name in names:
            iterations = BUDGET[name]
            cells: dict[str, float] = {}
            dist: dict[str, float] = {}
            for lever, options in (("default", {}), ("compile", {"compile": True}), ("bf16", {"precision": "bfloat16"})):
                planner = make_planner(name, horizon=h, iterations=iterations, **options)
                t0 = time.perf_counter()
                planner.replace(iterations=1).plan(model, start, goal, seed=0)  # warm-up (compiles)
                cells[lever + "_warm"] = time.perf_counter() - t0
                results = [timed(planner, model, start, goal) for _ in range(args.runs)]
                cells[lever] = min(seconds for seconds, _ in results) / iterations
                dist[lever] = results[0][1].final_distance.mean().item()
            print(f"| {name} | {h} | {1000 * cells['default']:.2f} | {1000 * cells['compile']:.2f} "
                  f"({cells['compile'] / cells['default']:.2f}) | {cells['compile_warm']:.1f} | {1000 * cells['bf16']:.2f} "
                  f"({cells['bf16'] / cells['default']:.2f}) | {dist['default']:.4f} / {dist['compile']:.4f} / {dist['bf16']:.4f} |",
                  flush=True)
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--horizons", default="10,20,40,80")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--state-dim", type=int, default=32)
    parser.add_argument("--action-dim", type=int, default=10, help="2-D actions packed with frameskip 5")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--planners", default=",".join(PLANNERS), help="planners of the time and levers tables")
    parser.add_argument("--tables", default="time,sync,levers", help="which tables: time, sync, levers")
    parser.add_argument("--runs", type=int, default=2, help="timed runs per cell (the best counts)")
    parser.add_argument("--clock", choices=list(CLOCK), default="wall", help="what a time is (see CLOCK)")
    args = parser.parse_args()
    global clock
    clock = CLOCK[args.clock]
    device = resolve_device(args.device)
    horizons = [int(h) for h in args.horizons.split(",")]
    names = [n for n in args.planners.split(",") if n]
    tables = set(args.tables.split(","))
    unknown = tables - {"time", "sync", "levers"} | set(names) - set(PLANNERS)
    if unknown:
        raise SystemExit(f"unknown tables or planners: {sorted(unknown)}")
    model = ResidualMLP(args.state_dim, args.action_dim, hidden=args.hidden, depth=3, seed=0).to(device)
    peak = matmul_rate(device)
    cpu = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(f"device: {device} ({where}); torch {torch.__version__}; matmul peak {peak / 1e9:.1f} GFLOP/s (float32, 2048^3)")
    print(f"model: residual MLP, D={args.state_dim}, A={args.action_dim}, 3x{args.hidden} hidden; batch {args.batch}; "
          f"clock: {args.clock} seconds\n")
    if "time" in tables:
        table_time(names, model, horizons, args, device, peak)
    if "sync" in tables:
        table_sync(model, horizons, args, device)
    if "levers" in tables:
        table_levers(names, model, horizons, args, device)


if __name__ == "__main__":
    main()
