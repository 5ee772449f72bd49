"""Episodes per second on the Ray actor pool (1 and 2 actors) against the same episodes in one process.

Every row is a whole ``wmplan run`` of the same seeded episodes, with the same planner options and
plan snapshots, storing every batch in Parquet as it arrives (tracking off): one process is the local
executor (the same actor class, no Ray, torch on every core); the pool is the Ray executor, whose
actors each hold a CPU share (torch threads set from it) and take the model from Ray's object store.
Each setting has its own batch size (``--one-batch``, ``--pool ACTORS:BATCH,...``): a batch costs
GRASP's iterations whatever its size, so one process does best with the whole run in one batch, and
the pool with as few batches as keep every actor busy.

Reported apart: Ray's start (once per driver, not counted), each row's start (the actors' start and
the model's load; one process: the model's load), the end-to-end rate (start included) and the
steady rate (from when every actor is ready to the last batch stored). Prints the machine, the load
average before and after, and a Markdown table.

    python benchmarks/pool.py                       # 256 Wall episodes, GRASP at its defaults, H = 5
    python benchmarks/pool.py --episodes 64 --pool 2:32
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

from wmplan.jobs.experiment import ExperimentConfig, load_config
from wmplan.jobs.runner import RunResult, run_experiment
from wmplan.platform.threads import available_cores


@dataclass(frozen=True)
class Row:
    how: str
    batch: int
    result: RunResult

    @property
    def end_to_end(self) -> float:
        return self.result.planned / self.result.seconds

    @property
    def steady(self) -> float:
        end = self.result.stored_s[-1] if self.result.stored_s else self.result.seconds
        return self.result.planned / max(1e-9, end - self.result.ready_s)


def pool_settings(text: str) -> list[tuple[int, int]]:
    """``ACTORS:BATCH,...`` as (actors, batch size) pairs."""
    try:
        pairs = [tuple(int(v) for v in part.split(":")) for part in text.split(",") if part.strip()]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or min(p) < 1 for p in pairs):
        raise argparse.ArgumentTypeError(f"--pool takes ACTORS:BATCH pairs separated by commas, e.g. 1:256,2:128, got {text!r}")
    return [(p[0], p[1]) for p in pairs]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{platform.machine()}, {available_cores()} cores ({cpu}), Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="checkpoints/wall", help="a checkpoint (train one with `wmplan run` or `wmplan train`)")
    parser.add_argument("--data", default="data/wall.parquet")
    parser.add_argument("--planner", default="grasp")
    parser.add_argument("--horizon", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=256)
    parser.add_argument("--one-batch", type=int, default=0, help="one process's batch size (0: every episode in one batch)")
    parser.add_argument("--pool", type=pool_settings, default=None,
                        help="pool rows as ACTORS:BATCH,... (default: 1 actor with the whole run in one batch; 2 actors "
                             "with one batch each, and with two each)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not os.path.exists(os.path.join(args.model, "config.json")):
        sys.exit(f"no checkpoint in {args.model}: train one first (`wmplan run` trains checkpoints/wall), or give --model")
    n = args.episodes
    one_batch = args.one_batch or n
    pool = args.pool or [(1, n), (2, -(-n // 2)), (2, -(-n // 4))]
    cores = available_cores()
    print(f"machine: {machine()}; load average (1/5/15 min) before: {load()}", flush=True)

    def config(*, executor: str, actors: int, batch: int, out: str) -> ExperimentConfig:
        return load_config(None, [f"model={args.model}", f"data={args.data}", f"output={out}", "tracking=false",
                                  f"planners={args.planner}", f"horizons={args.horizon}", f"episodes={n}",
                                  f"batch_size={batch}", f"actors={actors}", f"executor={executor}"])

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as out:
        torch.set_num_threads(cores)  # one process: every core
        result = run_experiment(config(executor="local", actors=1, batch=one_batch, out=out), run_id="one", say=lambda m: None)
        rows.append(Row(f"one process, no Ray, {cores} torch threads", one_batch, result))
        print(f"  one process done ({result.seconds:.1f} s), load {load()}", file=sys.stderr, flush=True)
        if cores > 1:  # the reference for the pool's scaling: what one core does on its own
            torch.set_num_threads(1)
            result = run_experiment(config(executor="local", actors=1, batch=one_batch, out=out), run_id="one-1", say=lambda m: None)
            rows.append(Row("one process, no Ray, 1 torch thread", one_batch, result))
            print(f"  one process at 1 thread done ({result.seconds:.1f} s), load {load()}", file=sys.stderr, flush=True)
            torch.set_num_threads(cores)

        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024**2)
        ray_start = time.perf_counter() - t0
        for k, (actors, batch) in enumerate(pool):
            result = run_experiment(config(executor="ray", actors=actors, batch=batch, out=out), run_id=f"pool-{k}", say=lambda m: None)
            threads = max(1, cores // actors)
            rows.append(Row(f"Ray pool, {actors} actor{'s' if actors > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}",
                            batch, result))
            print(f"  {actors} actor(s), batch {batch} done ({result.seconds:.1f} s), load {load()}", file=sys.stderr, flush=True)
        ray.shutdown()

    one = rows[0]
    print(f"\n{n} {args.planner} episodes (default options, plan snapshots on), H={args.horizon}, model {args.model}; "
          f"Ray start {ray_start:.1f} s (not counted); load average after: {load()}\n")
    print("| how | batch (batches) | start s | seconds | episodes / s | steady episodes / s | x one process | x one process, steady |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        r = row.result
        print(f"| {row.how} | {row.batch} ({-(-n // row.batch)}) | {r.ready_s:.1f} | {r.seconds:.1f} | {row.end_to_end:.2f} | "
              f"{row.steady:.2f} | {row.end_to_end / one.end_to_end:.2f} | {row.steady / one.steady:.2f} |")
    print("\nstart: the actors' start and the model's load (one process: the model's load); steady: episodes over the "
          "time from when every actor was ready to the last batch stored.")


if __name__ == "__main__":
    main()
