"""Time per iteration of every planner against horizon, and GRASP's achieved FLOP rate.

For a small residual-MLP world model and a batch of 64 problems, prints a Markdown table with each
planner's wall time per iteration (default options, a short fixed budget, best of two runs), its ratio to GRASP's,
and the FLOP rate that GRASP's world-model calls achieve (FLOPs counted by torch's FLOP counter
for one main iteration, forward and backward) as a fraction of this machine's dense matrix-multiply
rate, measured in the same run.

    python benchmarks/planners.py                 # CPU (or the GPU when there is one)
    python benchmarks/planners.py --device cuda --horizons 10,20,40,80,160
"""

from __future__ import annotations

import argparse
import platform
import time

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


def time_per_iteration(name: str, model, start, goal, horizon: int, **options) -> float:
    planner = make_planner(name, horizon=horizon, **options)
    planner.replace(iterations=1).plan(model, start, goal, seed=0)  # warm-up
    runs = [planner.plan(model, start, goal, seed=0) for _ in range(2)]
    return min(r.wall_time_s for r in runs) / planner.options.iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--horizons", default="10,20,40,80")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--state-dim", type=int, default=32)
    parser.add_argument("--action-dim", type=int, default=10, help="2-D actions packed with frameskip 5")
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    device = resolve_device(args.device)
    horizons = [int(h) for h in args.horizons.split(",")]
    model = ResidualMLP(args.state_dim, args.action_dim, hidden=args.hidden, depth=3, seed=0).to(device)
    peak = matmul_rate(device)
    cpu = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(f"device: {device} ({where}); torch {torch.__version__}; matmul peak {peak / 1e9:.1f} GFLOP/s (float32, 2048^3)")
    print(f"model: residual MLP, D={args.state_dim}, A={args.action_dim}, 3x{args.hidden} hidden; batch {args.batch}\n")
    names = list(PLANNERS)
    header = "| H | " + " | ".join(f"{n} ms/it (x GRASP)" for n in names) + " | GRASP main it, no sync (ms) | GRASP GFLOP/s | of matmul peak |"
    print(header)
    print("|" + "---|" * (len(names) + 4))
    for h in horizons:
        start, goal = reachable_problems(model, args.batch, h, seed=0, device=device)
        per_it = {n: time_per_iteration(n, model, start, goal, h, iterations=BUDGET[n]) for n in names}
        main_it = time_per_iteration("grasp", model, start, goal, h, iterations=BUDGET["grasp"], sync_interval=0)
        rate = grasp_flops_per_iteration(model, start, goal, h) / main_it
        cells = " | ".join(f"{1000 * per_it[n]:.2f} ({per_it[n] / per_it['grasp']:.1f})" for n in names)
        print(f"| {h} | {cells} | {1000 * main_it:.2f} | {rate / 1e9:.1f} | {100 * rate / peak:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
