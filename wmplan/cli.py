"""The ``wmplan`` command: parses arguments, validates them, and calls one function per subcommand.

Errors a user can cause (a mistyped planner or option, a bad value) end with a one-line message
naming the problem and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
from collections.abc import Sequence

from wmplan.platform.errors import ConfigError

EXIT_USAGE = 2


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="plan a batch of problems on a built-in analytic model with every planner and compare",
        description="Plan a batch of reachable problems on a built-in analytic world model with each planner "
        "and print a comparison table (success within a tolerance, distance, time).",
    )
    p.add_argument("--model", choices=["pointmass", "linear"], default="linear", help="analytic world model (default: %(default)s)")
    p.add_argument("--planners", default="grasp,gd,cem,latco,mppi", help="comma-separated planners (default: %(default)s)")
    p.add_argument("--horizons", default="10,20", help="comma-separated horizons in model steps (default: %(default)s)")
    p.add_argument("--problems", type=int, default=64, help="problems planned as one batch per planner and horizon (default: %(default)s)")
    p.add_argument("--tolerance", type=float, default=0.1, help="success: final distance to the goal below this (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the problems and the planners (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument(
        "--set", "-s", action="append", default=[], metavar="PLANNER.OPTION=VALUE",
        help="override a planner option, e.g. --set grasp.noise_scale=0.01 (repeatable; see 'wmplan planners')",
    )
    p.set_defaults(func=_run_demo)


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="generate a trajectory data set in a real simulator (Parquet)",
        description="Generate trajectories with a task's data-collection policy, in parallel, into one Parquet file "
        "(train/val split by trajectory; the configuration is stored in the file).",
    )
    p.add_argument("--env", required=True, help="task: wall, pointmaze or pusht")
    p.add_argument("--episodes", type=int, default=200, help="number of trajectories (default: %(default)s)")
    p.add_argument("--steps", type=int, default=0, help="env steps per trajectory (default: the task's, 100)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out fraction of trajectories (default: %(default)s)")
    p.add_argument("--frames", action="store_true", help="store a rendered RGB frame with every step")
    p.add_argument("--frame-size", type=int, default=64, help="frame side in pixels (default: %(default)s)")
    p.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    p.add_argument("--out", default=None, help="output file (default: data/ENV.parquet)")
    p.set_defaults(func=_run_data)


def _run_data(args: argparse.Namespace) -> int:
    import time

    from wmplan.platform.data import DataConfig, generate_dataset

    config = DataConfig(
        env=args.env, episodes=args.episodes, steps=args.steps, seed=args.seed,
        val_fraction=args.val_fraction, frames=args.frames, frame_size=args.frame_size,
    )
    out = args.out or f"data/{args.env}.parquet"
    t0 = time.perf_counter()
    path = generate_dataset(config, out, workers=args.workers,
                            progress=lambda done, total: print(f"\r{done}/{total} trajectories", end="", file=sys.stderr, flush=True))
    seconds = time.perf_counter() - t0
    print(file=sys.stderr)
    steps = config.episodes * config.steps_per_episode
    print(f"wrote {path}: {config.episodes} trajectories, {steps} steps in {seconds:.1f} s ({steps / seconds:.0f} steps/s)")
    return 0


def _add_planners(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("planners", help="list the planners and their options with defaults")
    p.add_argument("name", nargs="?", help="show only this planner")
    p.set_defaults(func=_run_planners)


def parse_overrides(items: Sequence[str], planners: Sequence[str]) -> dict[str, dict[str, object]]:
    """Turn ``["grasp.noise_scale=0.01", ...]`` into typed options per planner."""
    from wmplan.platform.options import parse_value
    from wmplan.platform.planners import planner_class

    out: dict[str, dict[str, object]] = {name: {} for name in planners}
    for item in items:
        key, eq, text = item.partition("=")
        name, dot, option = key.partition(".")
        if not (eq and dot and name and option):
            raise ConfigError(f"--set expects PLANNER.OPTION=VALUE, got {item!r}")
        cls = planner_class(name)
        if name not in out:
            raise ConfigError(f"--set {item!r} names planner {name!r}, which is not among --planners ({', '.join(planners)})")
        out[name][option] = parse_value(cls.Options, option, text, owner=f"planner {name!r}")
    return out


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _run_demo(args: argparse.Namespace) -> int:
    from wmplan.platform.demo import run_demo, format_table

    planners = _csv(args.planners)
    try:
        horizons = [int(h) for h in _csv(args.horizons)]
    except ValueError:
        raise ConfigError(f"--horizons must be comma-separated integers, got {args.horizons!r}") from None
    overrides = parse_overrides(args.set, planners)
    rows = run_demo(
        model=args.model, planners=planners, horizons=horizons, problems=args.problems,
        tolerance=args.tolerance, seed=args.seed, device=args.device, overrides=overrides,
        progress=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    print(format_table(rows, tolerance=args.tolerance))
    return 0


def _run_planners(args: argparse.Namespace) -> int:
    from wmplan.platform.options import option_docs
    from wmplan.platform.planners import PLANNERS, planner_class

    names = [args.name] if args.name else sorted(PLANNERS)
    for name in names:
        cls = planner_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name}: {doc}")
        docs = option_docs(cls.Options)
        for f in dataclasses.fields(cls.Options):
            default = f.default
            print(f"  {f.name} = {default!r}")
            if f.name in docs:
                print(textwrap.fill(docs[f.name], width=96, initial_indent="      ", subsequent_indent="      "))
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wmplan",
        description="Planning with learned world models: GRASP and its baselines (GD, CEM, LatCo, MPPI).",
    )
    from wmplan import __version__

    parser.add_argument("--version", action="version", version=f"wmplan {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_demo(sub)
    _add_data(sub)
    _add_planners(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"wmplan: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
