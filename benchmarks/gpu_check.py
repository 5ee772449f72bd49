"""The GPU paths measured in one command: the tables that benchmarks/gpu_check.sh writes and prints.

Each part writes one Markdown table to ``OUT/<part>.md`` and prints it; a part that needs a CUDA
device prints one line saying it is skipped instead, when there is none.

    python benchmarks/gpu_check.py planners --out gpu-check   # time per iteration against H and B
    python benchmarks/gpu_check.py visual --out gpu-check     # visual-model training throughput
    python benchmarks/gpu_check.py ray --out gpu-check        # 2 Ray actors at 0.5 GPU each (GPU only)
    python benchmarks/gpu_check.py sweep --out gpu-check      # one small sweep cell on the linear task

``--quick`` keeps a CPU run to seconds (one horizon, small batches, a few steps).
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from planners import BUDGET, grasp_flops_per_iteration, matmul_rate, sync, time_per_iteration  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def device_line(device: torch.device, peak: float | None = None) -> str:
    cpu = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    rate = f"; matmul {peak / 1e9:.1f} GFLOP/s (float32)" if peak else ""
    return f"device: {device} ({where}); torch {torch.__version__}{rate}"


def emit(out: Path, part: str, title: str, lines: list[str]) -> None:
    """Write one part's table to ``out/part.md`` and print it."""
    text = f"## {title}\n\n" + "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{part}.md").write_text(text)
    print(text, flush=True)


def batches_for(horizon: int, quick: bool) -> list[int]:
    """Batch sizes at one horizon: 16, and the power of two that makes B x H >= 4096."""
    if quick:
        return [4, 16]
    return [16, 2 ** math.ceil(math.log2(4096 / horizon))]


def part_planners(args: argparse.Namespace, device: torch.device) -> None:
    """Planner time per iteration against H and B, GRASP's fraction of the matmul rate, lifted / GD."""
    from wmplan.platform.models import ResidualMLP
    from wmplan.platform.planners import PLANNERS
    from wmplan.platform.problems import reachable_problems

    horizons = [10] if args.quick else [10, 20, 40, 80]
    budget = {n: max(1, BUDGET[n] // 10) if args.quick else BUDGET[n] for n in PLANNERS}
    budget["grasp"] = 50 if args.quick else BUDGET["grasp"]  # one sync phase (its default cadence) in quick mode too
    n = 8192 if device.type == "cuda" else (512 if args.quick else 2048)
    peak = matmul_rate(device, n=n)
    model = ResidualMLP(32, 10, hidden=256, depth=3, seed=0).to(device)
    names = list(PLANNERS)
    lines = [device_line(device, peak) + f" (matmul {n}^3)",
             "model: residual MLP, D=32, A=10, 3x256 hidden; ms per iteration, best of two runs; "
             "lifted: one GRASP iteration with syncs off (one batched model call over all B x H transitions)",
             "",
             "| H | B | B x H | " + " | ".join(f"{p} ms/it" for p in names)
             + " | GRASP lifted ms/it | lifted / GD | lifted GFLOP/s | of matmul rate |",
             "|" + "---|" * (len(names) + 7)]
    for h in horizons:
        for b in batches_for(h, args.quick):
            start, goal = reachable_problems(model, b, h, seed=0, device=device)
            per_it = {p: time_per_iteration(p, model, start, goal, h, iterations=budget[p]) for p in names}
            lifted = time_per_iteration("grasp", model, start, goal, h, iterations=budget["grasp"], sync_interval=0)
            rate = grasp_flops_per_iteration(model, start, goal, h) / lifted
            cells = " | ".join(f"{1000 * per_it[p]:.2f}" for p in names)
            lines.append(f"| {h} | {b} | {b * h} | {cells} | {1000 * lifted:.2f} | {lifted / per_it['gd']:.2f} | "
                         f"{rate / 1e9:.1f} | {100 * rate / peak:.1f}% |")
            print(lines[-1], file=sys.stderr, flush=True)  # progress
    lines += lever_lines(args, device, model)
    emit(args.out, "planners", "Planner time per iteration against horizon and batch", lines)


def lever_lines(args: argparse.Namespace, device: torch.device, model: torch.nn.Module) -> list[str]:
    """GD and GRASP with the speed options compile and precision='bfloat16' against their default path, at
    the longest horizon and batch 16 (compile is skipped with --quick: compiling takes minutes on a CPU)."""
    from wmplan.platform.problems import reachable_problems

    h, b = (10, 4) if args.quick else (80, 16)
    start, goal = reachable_problems(model, b, h, seed=0, device=device)
    levers = {"default": {}, "bf16": {"precision": "bfloat16"}} | ({} if args.quick else {"compile": {"compile": True}})
    lines = ["", f"Speed options at H = {h}, B = {b}: ms per iteration, best of two runs after a warm-up call that compiles; "
             "in brackets the whole cell's seconds, compiling included" + ("; compile skipped with --quick" if args.quick else ""),
             "", f"| planner, H = {h}, B = {b} | " + " | ".join(f"{lever} ms/it" for lever in levers) + " |",
             "|---|" + "---|" * len(levers)]
    for name in ("gd", "grasp"):
        iterations = 50 if args.quick and name == "grasp" else BUDGET[name]
        cells = []
        for options in levers.values():
            sync(device)
            t0 = time.perf_counter()
            per_it = time_per_iteration(name, model, start, goal, h, iterations=iterations, **options)
            cells.append(f"{1000 * per_it:.2f} ({time.perf_counter() - t0:.0f} s)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], file=sys.stderr, flush=True)  # progress
    return lines


def part_visual(args: argparse.Namespace, device: torch.device) -> None:
    """One visual model's training throughput: autoencoder frames/s and predictor transitions/s."""
    from visual import frames
    from wmplan.platform.models import VisualModelConfig, VisualTrainConfig, VisualWorldModel
    from wmplan.platform.models.training import TrainConfig, fit_rollouts
    from wmplan.platform.models.visual_training import train_autoencoder

    steps = 5 if args.quick else 50
    pictures = frames(64 if args.quick else 512, 64)
    config = VisualModelConfig(env="wall", state_dim=2, action_dim=10, latent_channels=4)
    model = VisualWorldModel(config, seed=0).to(device)
    sync(device)
    t0 = time.perf_counter()
    ae = train_autoencoder(model, pictures, VisualTrainConfig(encoder_steps=steps, steps=steps, device=str(device)), None)
    sync(device)
    ae_s = time.perf_counter() - t0
    model.encoder.requires_grad_(False)
    z = torch.randn(512 if args.quick else 4096, 4, config.latent_dim, device=device)
    a = torch.rand(z.shape[0], 3, 10, device=device) * 2 - 1
    fit = fit_rollouts(model, z, a, TrainConfig(steps=steps, device=str(device)))
    sync(device)
    lines = [device_line(device),
             f"64x64 wall frames, built-in encoder, latent 4 x 8 x 8 (D = {config.latent_dim}), predictor 3x256; "
             f"{steps} steps per stage",
             "",
             "| stage | steps | steps/s | throughput |",
             "|---|---|---|---|",
             f"| autoencoder | {steps} | {steps / ae_s:.2f} | {ae['encoder_frames_per_s']:.0f} frames/s |",
             f"| predictor | {steps} | {fit['transitions_per_s'] / (z.shape[0] * 3):.2f} | "
             f"{fit['transitions_per_s']:.0f} transitions/s |"]
    emit(args.out, "visual", "Visual-model training throughput", lines)


def wmplan(*argv: str) -> tuple[float, str]:
    """Run the ``wmplan`` command (this interpreter's), return (wall seconds, its output)."""
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "wmplan", *argv], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        print(done.stdout[-4000:], file=sys.stderr)
        raise SystemExit(f"wmplan {' '.join(argv)}: exit status {done.returncode}")
    return wall, done.stdout


def part_ray(args: argparse.Namespace, device: torch.device) -> None:
    """Two Ray actors, each taking half the GPU, plan one batch each on the linear task."""
    import pandas as pd

    folder = args.out / "ray-run"
    shutil.rmtree(folder, ignore_errors=True)
    episodes, actors = 64, 2
    wall, _ = wmplan("run", "--executor", "ray", "--task", "linear", "--model", "auto", "--planners", "grasp",
                     "--horizons", "20", "--episodes", str(episodes), "--actors", str(actors),
                     "--batch-size", str(episodes // actors), "--snapshots", "0", "--no-tracking",
                     "--output", str(folder), "--run-id", "gpu-check", "--set", f"device={device.type}")
    files = [f for f in glob.glob(str(folder / "**" / "*.parquet"), recursive=True) if "episodes" in f]
    frame = pd.concat([pd.read_parquet(f) for f in files])
    lines = [device_line(device),
             f"wmplan run --executor ray: task linear (exact dynamics), GRASP, H = 20, {episodes} episodes, "
             f"{actors} actors at {1 / actors:.1f} GPU each, one batch of {episodes // actors} per actor",
             "",
             "| actors | GPU each | episodes | success | median batch planning time (s) | whole command (s) |",
             "|---|---|---|---|---|---|",
             f"| {actors} | {1 / actors:.1f} | {len(frame)} | {100 * frame['success'].mean():.1f}% | "
             f"{frame['planning_time_s'].median():.3f} | {wall:.1f} |"]
    emit(args.out, "ray", "Ray actors sharing one GPU", lines)


def part_sweep(args: argparse.Namespace, device: torch.device) -> None:
    """One small sweep cell: GRASP at H = 10 on the linear task, 2 Optuna trials, tracking off."""
    import pandas as pd

    folder = args.out / "sweep"
    shutil.rmtree(folder, ignore_errors=True)
    tuning, test = (4, 8) if args.quick else (16, 50)
    wall, _ = wmplan("bench", "sweep", "--task", "linear", "--model", "auto", "--planners", "grasp", "--horizons", "10",
                     "--trials", "2", "--tuning-episodes", str(tuning), "--test-episodes", str(test),
                     "--budget-per-step", "1000", "--parallel", "1", "--actors", "2", "--snapshots", "0", "--no-tracking",
                     "--device", device.type, "--name", "gpu-check", "--output", str(folder),
                     "--storage", str(folder / "study.journal"))
    row = pd.read_parquet(folder / "summary.parquet").iloc[0]
    lines = [device_line(device),
             f"wmplan bench sweep: task linear (exact dynamics), GRASP, H = 10, 2 trials on {tuning} tuning episodes, "
             f"{test} held-out episodes, tracking off (the whole report: sweep/sweep.md)",
             "",
             "| planner | H | held-out episodes | success | transitions per call | budget | whole command (s) |",
             "|---|---|---|---|---|---|---|",
             f"| {row['planner']} | {row['horizon']} | {row['count']} | {100 * row['success_rate']:.1f}% | "
             f"{row['median_transitions']:.0f} | {row['budget']} | {wall:.1f} |"]
    emit(args.out, "sweep", "One sweep cell", lines)


PARTS = {"planners": part_planners, "visual": part_visual, "ray": part_ray, "sweep": part_sweep}
GPU_ONLY = {"ray"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=list(PARTS))
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="folder of the tables")
    parser.add_argument("--quick", action="store_true", help="small sizes: a CPU run of seconds")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if args.part in GPU_ONLY and not cuda:
        print(f"no CUDA device: skipping the {args.part} part (Ray actors each taking a GPU share)", flush=True)
        return
    device = torch.device("cuda") if cuda else torch.device("cpu")
    PARTS[args.part](args, device)


if __name__ == "__main__":
    main()
