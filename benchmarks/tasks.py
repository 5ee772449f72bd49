"""The three tasks measured end to end: data, training, model error, and planner success.

For each task: generate the default data set, train the default state model (timed), report its
one-step and 10-step validation error, then plan N episodes per planner and horizon in one
process and judge them in the real simulator. Prints Markdown tables. The same steps as
``wmplan data``, ``wmplan train``, ``wmplan eval-model`` and ``wmplan plan`` with their defaults.

    python benchmarks/tasks.py --out bench-tasks            # ~20 min on 2 CPU cores
    python benchmarks/tasks.py --tasks wall --episodes 20   # a quick look
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from wmplan.platform.data import generate_dataset, read_dataset
from wmplan.platform.models import TrainConfig, evaluate_model, load_world_model, save_checkpoint, train_state_model
from wmplan.platform.workflow import default_data_config, format_outcomes, plan_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="wall,pointmaze,pusht")
    parser.add_argument("--planners", default="cem,gd,grasp")
    parser.add_argument("--horizons", default="5,10")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--out", default="bench-tasks", help="working directory for data sets and checkpoints")
    args = parser.parse_args()
    out = Path(args.out)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads; torch {torch.__version__}\n")
    model_rows, plan_tables = [], []
    for task in args.tasks.split(","):
        data, ckpt = out / f"{task}.parquet", out / task
        t0 = time.perf_counter()
        generate_dataset(default_data_config(task), data)
        data_s = time.perf_counter() - t0
        dataset = read_dataset(data)
        if (ckpt / "config.json").exists():
            model = load_world_model(ckpt)
            train_s = float("nan")
        else:
            model, metrics = train_state_model(dataset, TrainConfig())
            save_checkpoint(model, ckpt, metrics=metrics)
            train_s = metrics["train_seconds"]
        ev = evaluate_model(model, dataset, k=10)
        crossing = "-" if ev["wall_crossing_rate"] is None else f"{100 * ev['wall_crossing_rate']:.1f}%"
        model_rows.append(f"| {task} | {data_s:.1f} | {train_s:.1f} | {ev['one_step_error']:.3g} | {ev['k_step_error']:.3g} | {crossing} |")
        print(model_rows[-1], flush=True)
        outcomes = plan_task(env_name=task, model=model, planners=args.planners.split(","), options={},
                             horizons=[int(h) for h in args.horizons.split(",")], episodes=args.episodes, seed=0,
                             dataset=dataset, progress=lambda m: print("  " + m, flush=True))
        plan_tables.append(f"**{task}**\n\n{format_outcomes(outcomes)}\n")
    print("\n| task | data (s) | training (s) | one-step error | 10-step error | model crosses the wall |")
    print("|---|---|---|---|---|---|")
    print("\n".join(model_rows))
    print()
    print("\n".join(plan_tables))


if __name__ == "__main__":
    main()
