"""Episodes per second on the Ray actor pool (1 and 2 actors) against the same episodes in one process.

The same seeded episodes, planner and batch size everywhere: one process runs the batches one
after another with no Ray at all; the pool runs them on actors that each load the model once. The
Ray start itself is timed apart (it is paid once per driver). Prints a Markdown table.

    python benchmarks/pool.py --model checkpoints/wall --data data/wall.parquet
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch

from wmplan.jobs.experiment import load_config
from wmplan.jobs.runner import run_experiment
from wmplan.platform.envs import make_env
from wmplan.platform.episode import run_episodes
from wmplan.platform.models import load_world_model
from wmplan.platform.planners import make_planner
from wmplan.platform.workflow import episode_specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="checkpoints/wall")
    parser.add_argument("--data", default="data/wall.parquet")
    parser.add_argument("--planner", default="grasp")
    parser.add_argument("--horizon", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    task = "wall"
    cores = os.cpu_count() or 1

    env = make_env(task)
    specs = episode_specs(env, horizon=args.horizon, count=args.episodes, seed=0, dataset=None)
    torch.set_num_threads(max(1, cores))
    model = load_world_model(args.model)
    planner = make_planner(args.planner, horizon=args.horizon)
    t0 = time.perf_counter()
    for lo in range(0, len(specs), args.batch_size):
        run_episodes(env, model, planner, specs[lo : lo + args.batch_size], planner_name=args.planner, plan_seed=lo)
    single = time.perf_counter() - t0

    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024**2)
    ray_start = time.perf_counter() - t0
    rows = [("one process, no Ray", single, None)]
    with tempfile.TemporaryDirectory() as out:
        for actors in (1, 2):
            config = load_config(None, [f"model={args.model}", f"data={args.data}", f"output={out}", "tracking=false",
                                        f"planners={args.planner}", f"horizons={args.horizon}", f"episodes={args.episodes}",
                                        f"batch_size={args.batch_size}", f"actors={actors}"])
            result = run_experiment(config, run_id=f"pool-{actors}", say=lambda m: None)
            rows.append((f"Ray pool, {actors} actor{'s' if actors > 1 else ''}", result.seconds, actors))
    ray.shutdown()

    print(f"machine: {platform.machine()}, {cores} cores; {args.episodes} wall episodes, {args.planner} "
          f"(default options), H={args.horizon}, batches of {args.batch_size}; Ray start {ray_start:.1f} s (not counted)\n")
    print("| how | seconds | episodes / s | x one process |")
    print("|---|---|---|---|")
    for name, seconds, _ in rows:
        print(f"| {name} | {seconds:.1f} | {args.episodes / seconds:.2f} | {single / seconds:.2f} |")


if __name__ == "__main__":
    main()
