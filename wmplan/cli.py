"""The ``wmplan`` command: parses arguments, validates them, and calls one function per subcommand.

Errors a user can cause (a mistyped planner or option, a bad value) end with a one-line message
naming the problem and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from wmplan.config import BY_PLANNER, add_flags, config_from_args, flag_overrides
from wmplan.platform.envs import DEFAULT_ANALYTIC_TASK
from wmplan.platform.errors import ConfigError

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


_PARAMETER = {"parameter": True}
"""Field metadata of :class:`DemoConfig`: a parameter of the analytic model (None: the model's default)."""


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """The demo: every planner on one batch of reachable problems of an analytic world model."""

    WHAT: ClassVar[str] = "demo config"

    model: str = DEFAULT_ANALYTIC_TASK
    """Analytic world model: a task with exact dynamics (linear, pointmass, obstacles), planned on its own goals H
    steps of correlated random actions away."""
    planners: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {p: {} for p in ("grasp", "gd", "cem", "latco", "mppi")}, metadata=BY_PLANNER)
    """Planners compared, each with its options (see 'wmplan planners')."""
    horizons: list[int] = field(default_factory=lambda: [10, 20])
    """Horizons in model steps."""
    problems: int = 64
    """Problems planned as one batch per planner and horizon."""
    tolerance: float = 0.1
    """Success: final distance to the goal below this."""
    seed: int = 0
    """Seed of the problems and the planners."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    radius: float | None = field(default=None, metadata=_PARAMETER)
    """linear: spectral radius of the rotation (none: 1.05; above 1 the dynamics expand)."""
    angle: float | None = field(default=None, metadata=_PARAMETER)
    """linear: rotation per step in radians (none: 0.3)."""
    dt: float | None = field(default=None, metadata=_PARAMETER)
    """pointmass: time step in seconds (none: 0.2)."""
    damping: float | None = field(default=None, metadata=_PARAMETER)
    """pointmass: velocity damping in 1/s (none: 0.2)."""
    obstacles: int | None = field(default=None, metadata=_PARAMETER)
    """obstacles: number of circular obstacles (none: 6)."""
    layout_seed: int | None = field(default=None, metadata=_PARAMETER)
    """obstacles: seed of the obstacle layout (none: 0)."""
    speed: float | None = field(default=None, metadata=_PARAMETER)
    """obstacles: world units one unit of action moves per step (none: 0.2)."""
    sharpness: float | None = field(default=None, metadata=_PARAMETER)
    """obstacles: stiffness of the barrier in 1/world units (none: 20)."""
    persistence: float | None = field(default=None, metadata=_PARAMETER)
    """Every model: how slowly the random actions that place the goals change, in [0, 1) (none: 0.9)."""

    def parameters(self) -> dict[str, Any]:
        """The model parameters given (the fields marked as parameters that are not None): the model's task options;
        a model refuses one it does not take."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata.get("parameter") and getattr(self, f.name) is not None}


def _add_demo(sub: argparse._SubParsersAction, full: bool) -> None:
    p = sub.add_parser(
        "demo",
        help="plan a batch of problems on a built-in analytic model with every planner and compare",
        description="Plan a batch of reachable problems on a built-in analytic world model (--model linear, "
        "pointmass or obstacles, with its parameters, e.g. --radius 1.05 --angle 0.3, --dt 0.2 --damping 0.2, "
        "--obstacles 6) with each planner and print a comparison table (success within a tolerance, distance, time).",
    )
    if full:
        add_flags(p, DemoConfig)
    p.set_defaults(func=_run_demo)


def _add_data(sub: argparse._SubParsersAction, full: bool) -> None:
    p = sub.add_parser(
        "data",
        help="generate a trajectory data set in a real simulator (Parquet)",
        description="Generate trajectories with a task's data-collection policy, in parallel, into one Parquet file "
        "(train/val split by trajectory; the configuration is stored in the file). With --frames and no --episodes, "
        "as many trajectories, and with the actions, the task's visual recipe says.",
    )
    p.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    p.add_argument("--out", default=None, help="output file (default: data/ENV.parquet, with --frames data/ENV-pixels.parquet)")
    if full:
        from wmplan.platform.data import DataConfig

        add_flags(p, DataConfig)
    p.set_defaults(func=_run_data)


def _run_data(args: argparse.Namespace) -> int:
    import time

    from wmplan.platform.data import DataConfig, generate_dataset
    from wmplan.platform.progress import Progress
    from wmplan.platform.workflow import default_data_config, default_data_path

    obs = "pixels" if args.field_frames else "state"
    default = default_data_config(args.field_env, obs=obs)
    config = config_from_args(DataConfig, args, defaults={"episodes": default.episodes, "policy": default.policy})
    out = args.out or default_data_path(config.env, obs=obs)
    t0 = time.perf_counter()
    with Progress(stage="data", total=config.episodes, unit="trajectories") as shown:
        path = generate_dataset(config, out, workers=args.workers, progress=lambda done, total: shown.update_to(done))
    seconds = time.perf_counter() - t0
    steps = config.episodes * config.steps_per_episode
    print(f"wrote {path}: {config.episodes} trajectories, {steps} steps in {seconds:.1f} s ({steps / seconds:.0f} steps/s)")
    return 0


def _add_train(sub: argparse._SubParsersAction, full: bool) -> None:
    p = sub.add_parser(
        "train",
        help="train a world model on a data set: on states, or on pictures with --obs pixels (safetensors + JSON)",
        description="Train a world model. --obs state (default) learns from env states; --obs pixels learns from the "
        "data set's frames only (generate them with 'wmplan data --frames'): an autoencoder is trained and frozen, "
        "then a predictor learns in its latent space (--kind visual), or an encoder and a predictor learn together "
        "from frames, a JEPA (--kind jepa). --encoder package.module:factory --encoder-weights FILE plugs "
        "in a frozen encoder of your own instead. Defaults that differ by --obs are shown as STATE/PIXELS.",
    )
    p.add_argument("--env", required=True, help="task: a built-in or registered name, or package.module:factory")
    p.add_argument("--obs", choices=["state", "pixels"], default="state", help="what the model sees (default: %(default)s)")
    p.add_argument("--data", default=None, help="data set (default: data/ENV.parquet, or data/ENV-pixels.parquet)")
    p.add_argument("--out", default=None, help="checkpoint directory (default: checkpoints/ENV, or checkpoints/ENV-pixels)")
    p.add_argument("--steps", type=int, default=None,
                   help="predictor gradient steps; jepa: joint steps of encoder and predictor (default: 8000/the task's visual "
                   "recipe; jepa 1000)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per step (default: 256; jepa 32)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 0.001)")
    p.add_argument("--rollout-steps", type=int, default=None, help="model steps unrolled in the loss (default: 3)")
    p.add_argument("--hidden", type=int, default=None, help="predictor hidden width (default: 256)")
    p.add_argument("--depth", type=int, default=None, help="predictor hidden layers (default: 3)")
    p.add_argument("--env-step-predictor", action=argparse.BooleanOptionalAction, default=None,
                   help="state models and --kind jepa: the predictor takes one env action at a time and is applied frameskip "
                   "times per model step (default: as the task's visual recipe says for its own kind, else one model step "
                   "from the packed model action)")
    p.add_argument("--activation", choices=["silu", "relu"], default=None,
                   help="state models and --kind jepa's predictor: activation of the hidden layers; relu draws sharp edges such "
                   "as a wall (default: silu)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto: the GPU when there is one (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: one per available core; default: %(default)s, measured fastest on a busy machine)")
    g = p.add_argument_group("pixels")
    g.add_argument("--kind", choices=["visual", "jepa"], default=None,
                   help="visual: frozen autoencoder, then a predictor; jepa: encoder and predictor trained together "
                   "(default: the task's visual recipe's kind, else visual)")
    g.add_argument("--encoder-steps", type=int, default=None, help="visual: autoencoder steps (default: 3000)")
    g.add_argument("--probe-steps", type=int, default=None, help="steps of the state probe, for reporting only (default: 3000; jepa 2000)")
    g.add_argument("--channels", type=int, default=None, help="encoder channels (default: 32; jepa 16)")
    g.add_argument("--latent-channels", type=int, default=None, help="visual: channels of the 8x-downsampled latent grid (default: 8)")
    g.add_argument("--no-decoder", action="store_true", help="visual: drop the decoder after training the encoder")
    g.add_argument("--encoder", default="builtin", help="visual: a frozen encoder of your own, package.module:factory (default: %(default)s)")
    g.add_argument("--encoder-weights", default="", help="visual: safetensors weights of --encoder")
    g.add_argument("--proprio", action=argparse.BooleanOptionalAction, default=None,
                   help="carry the simulator's proprioceptive state beside the latent and predict it (DINO-WM), so that runs may "
                   "weigh it in the planning cost (--set proprio_weight=1; 0 by default) (default: as the task's visual "
                   "recipe says where --kind is not given, else off)")
    j = p.add_argument_group("jepa (--obs pixels --kind jepa)")
    j.add_argument("--preset", choices=["cpu", "gpu"], default="cpu",
                   help="recipe: cpu (minutes on two cores) or gpu (wider, longer; the flags below override it) (default: %(default)s)")
    j.add_argument("--keypoints", type=int, default=None, help="keypoint maps of the encoder (default: 16)")
    j.add_argument("--latent-dim", type=int, default=None, help="size D of the latent state (default: 32)")
    j.add_argument("--sigreg-weight", type=float, default=None, help="weight of the SIGReg anti-collapse term (default: 1.0)")
    j.add_argument("--predictor-steps", type=int, default=None,
                   help="steps of the last stage, the predictor alone on the frozen encoder's latents (default: 4000)")
    _add_ensemble_flags(p)
    _add_rounds_flags(p)
    p.set_defaults(func=_run_train)


def _add_rounds_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "rounds of plan / execute / retrain (--obs state)",
        "After training, each round plans problems of the task (a seed stream no evaluation draws from) with each "
        "planner on the current model, executes the plans in the simulator, adds the executed transitions to the data "
        "and fine-tunes the model on it (data aggregation). The aggregated data are written beside the data set with a "
        "'round' column (the data set is not changed); the checkpoint records the rounds and their cost.")
    g.add_argument("--rounds", type=int, default=0, help="rounds (default: %(default)s, none)")
    g.add_argument("--round-episodes", type=int, default=None, help="problems per planner per round (default: 100)")
    g.add_argument("--round-planners", default=None, help="planners of the rounds, comma-separated (default: cem,gd,grasp)")
    g.add_argument("--round-steps", type=int, default=None, help="fine-tuning gradient steps after each round (default: 2000)")
    g.add_argument("--round-lr", type=float, default=None, help="peak learning rate of the fine-tuning (default: 0.0003)")
    g.add_argument("--round-repeat", type=int, default=None,
                   help="times each executed trajectory counts in the fine-tuning data (default: 4)")
    g.add_argument("--round-horizon", type=int, default=None, help="H of the rounds' problems in model steps (default: 5)")
    g.add_argument("--round-data", default=None,
                   help="where the aggregated data go (default: beside the data set, DATA_STEM.CHECKPOINT_NAME-rounds.parquet)")
    g.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="with --rounds: start the rounds from this trained state checkpoint instead of training a new model "
                   "(its training metrics are kept; the training flags then set only the fine-tuning's batch, rollout and threads)")


def _rounds_config(args: argparse.Namespace) -> Any:
    """The RoundsConfig of the --round-* flags (None without --rounds)."""
    given = {k: v for k, v in dict(episodes=args.round_episodes, steps=args.round_steps, lr=args.round_lr, repeat=args.round_repeat,
                                    horizon=args.round_horizon).items() if v is not None}
    if args.round_planners is not None:
        given["planners"] = tuple(x.strip() for x in args.round_planners.split(",") if x.strip())
    if args.rounds == 0:
        if given or args.round_data or args.init:
            raise ConfigError("--round-*, --init and --round-data are for rounds: add --rounds N (N >= 1)")
        return None
    if args.obs != "state":
        raise ConfigError("--rounds trains state models: use --obs state")
    from wmplan.platform.models.rounds import RoundsConfig

    return RoundsConfig(rounds=args.rounds, seed=args.seed, **given)


def _add_ensemble_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("state ensemble (--obs state)")
    g.add_argument("--members", type=int, default=1,
                   help="1: one state MLP; N >= 2: an ensemble of N bootstrapped members (kind state_ensemble) that plans on "
                   "the mean of N - 1 and judges in-model success on the last (default: %(default)s)")
    g.add_argument("--disagreement-weight", type=float, default=None,
                   help="ensemble: weight of the members' accumulated disagreement in the planning cost, 0: off "
                   "(default: 1.0)")
    g.add_argument("--no-judge", action="store_true", help="ensemble: plan on every member (no held-out judge)")
    g.add_argument("--action-bounds", choices=["env", "data"], default=None,
                   help="actions planners may try: the task's bounds, or the training data's 0.5/99.5 percentiles per "
                   "packed dimension (default: env for one model, data for an ensemble)")


def _ensemble_options(args: argparse.Namespace) -> dict[str, Any]:
    """The training options of the state-ensemble flags (none for one model with the defaults)."""
    options: dict[str, Any] = {}
    if args.action_bounds is not None:
        options["action_bounds"] = args.action_bounds
    if args.members == 1:
        if args.disagreement_weight is not None or args.no_judge:
            raise ConfigError("--disagreement-weight and --no-judge are for an ensemble: add --members N (N >= 2)")
        return options
    if args.obs != "state":
        raise ConfigError("--members N (an ensemble) trains state models: use --obs state")
    options.update(members=args.members, judge=not args.no_judge)
    if args.disagreement_weight is not None:
        options["disagreement_weight"] = args.disagreement_weight
    return options


def _run_train(args: argparse.Namespace) -> int:
    from wmplan.platform.data import read_dataset
    from wmplan.platform.demo import resolve_device
    from wmplan.platform.registry import task_class
    from wmplan.platform.workflow import default_checkpoint, default_data_path, default_train_config, pixel_kind, train_model

    task_class(args.env)  # an unknown task fails here
    pixels = args.obs == "pixels"
    data = Path(args.data) if args.data else default_data_path(args.env, obs=args.obs)
    out = Path(args.out) if args.out else default_checkpoint(args.env, obs=args.obs)
    def given(**values: Any) -> dict[str, Any]:
        return {k: v for k, v in values.items() if v is not None}

    options: dict[str, Any] = dict(seed=args.seed, threads=args.threads)
    options.update(given(steps=args.steps, batch_size=args.batch_size, lr=args.lr, rollout_steps=args.rollout_steps, hidden=args.hidden,
                         depth=args.depth))
    options.update(_ensemble_options(args))
    jepa = given(keypoints=args.keypoints, latent_dim=args.latent_dim, sigreg_weight=args.sigreg_weight,
                 predictor_steps=args.predictor_steps, env_step_predictor=args.env_step_predictor if pixels else None)
    if not pixels:
        options.update(given(env_step=args.env_step_predictor, activation=args.activation))
        if args.env_step_predictor and args.members > 1:
            raise ConfigError("--env-step-predictor trains one state model; an ensemble (--members N) predicts whole model steps")
    elif args.activation is not None and pixel_kind(args.env, args.kind) != "jepa":
        raise ConfigError("--activation is for state models and --kind jepa")
    else:
        jepa.update(given(activation=args.activation))
    if args.kind is not None and not pixels:
        raise ConfigError(f"--kind {args.kind} trains a model of pictures: add --obs pixels")
    if args.proprio and not pixels:
        raise ConfigError("--proprio trains a model of pictures with proprio: add --obs pixels (a state model sees the whole state)")
    if args.proprio is not None and pixels:  # else the task's visual recipe decides (default_train_config)
        options["proprio"] = args.proprio
    kind = pixel_kind(args.env, args.kind) if pixels else None
    if kind != "jepa" and (jepa or args.preset != "cpu"):
        raise ConfigError("--preset, --keypoints, --latent-dim, --sigreg-weight, --predictor-steps and --env-step-predictor "
                          "are for --obs pixels --kind jepa (--env-step-predictor also for state models)")
    if kind == "jepa":
        visual_only = given(encoder_steps=args.encoder_steps, latent_channels=args.latent_channels, no_decoder=args.no_decoder or None,
                            encoder=None if args.encoder == "builtin" else args.encoder, encoder_weights=args.encoder_weights or None)
        if visual_only:
            raise ConfigError(f"--{'/--'.join(k.replace('_', '-') for k in visual_only)} "
                              f"{'is' if len(visual_only) == 1 else 'are'} for --kind visual, not jepa")
        options.update(given(probe_steps=args.probe_steps, channels=args.channels), **jepa)
    elif pixels:
        options.update(given(encoder_steps=args.encoder_steps, probe_steps=args.probe_steps, channels=args.channels,
                             latent_channels=args.latent_channels),
                       decoder=not args.no_decoder and args.encoder == "builtin", encoder=args.encoder,
                       encoder_weights=args.encoder_weights)
    config = default_train_config(args.env, obs=args.obs, kind=args.kind, preset=args.preset, device=str(resolve_device(args.device)),
                                  **options)
    if not data.exists():
        raise ConfigError(f"data set {str(data)!r} does not exist; generate it with "
                          f"'wmplan data --env {args.env}{' --frames' if pixels else ''} --out {data}'")
    dataset = read_dataset(data)
    if dataset.env != args.env:
        raise ConfigError(f"data set {str(data)!r} is for task {dataset.env!r}, not {args.env!r}")

    rounds = _rounds_config(args)
    from wmplan.platform.progress import StageProgress

    if rounds is not None and args.init:
        model, metrics = _initial_model(args.init, dataset)
    else:
        progress = StageProgress()  # each stage on stderr: redrawn on a terminal, a line every 10 s in a file
        try:
            model, metrics = train_model(dataset, config, out, progress=progress)
        finally:
            progress.close()
    if rounds is not None:
        from wmplan.platform.models.rounds import aggregated_data_path, train_rounds
        from wmplan.platform.registry import make_task

        model, metrics = train_rounds(dataset, model, metrics, config, rounds, checkpoint=out,
                                      data_out=Path(args.round_data) if args.round_data else aggregated_data_path(data, out),
                                      env=make_task(args.env), device=config.device,
                                      progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    evaluation = metrics["evaluation"]
    seconds = metrics.get("total_seconds", metrics["train_seconds"])
    summary = f"saved {out}: trained in {seconds:.1f} s"
    if "latent_std_min" in metrics:  # a JEPA model
        summary += (f" (encoder and predictor {metrics['train_seconds']:.1f} s, predictor alone "
                    f"{metrics.get('predictor_seconds') or 0:.1f} s, probe {metrics['probe_seconds']:.1f} s); latent {metrics['latent_dim']} "
                    f"values, per-dimension std {metrics['latent_std_min']:.3g} (min) {metrics['latent_std_mean']:.3g} (mean)")
    elif pixels:
        summary += (f" (encoder {metrics.get('encoder_seconds') or 0:.1f} s, predictor {metrics['train_seconds']:.1f} s); "
                    f"latent {metrics['latent_dim']} values")
        if metrics.get("val_reconstruction_mse") is not None:
            summary += (f"; validation reconstruction MSE {metrics['val_reconstruction_mse']:.3g} "
                        f"(the mean picture: {metrics['val_mean_picture_mse']:.3g})")
    if metrics.get("val_mse_before") is not None:
        space = "latent" if pixels else "normalised"
        summary += f"; validation one-step MSE ({space}) {metrics['val_mse_before']:.4g} -> {metrics['val_mse_after']:.4g}"
    if evaluation:
        via = " via the state probe" if pixels else ""
        summary += (f"; one-step error {evaluation['one_step_error']:.4g}, {evaluation['k']}-step error "
                    f"{evaluation['k_step_error']:.4g} (env units{via})")
    print(summary)
    _print_ensemble_record(metrics)
    _print_rounds_record(metrics)
    return 0


def _initial_model(checkpoint: str, dataset: Any) -> tuple[Any, dict[str, Any]]:
    """--init: a trained state checkpoint (one MLP or an ensemble) for the data set's task, and its metrics."""
    from wmplan.platform.models import StateWorldModel, load_world_model, read_checkpoint_info

    model = load_world_model(checkpoint)
    if not isinstance(model, StateWorldModel):
        raise ConfigError(f"--init {checkpoint!r} is a {type(model).__name__}: rounds fine-tune state models")
    if model.config.env != dataset.env:
        raise ConfigError(f"--init {checkpoint!r} was trained on {model.config.env!r}, the data set is for {dataset.env!r}")
    metrics = dict(read_checkpoint_info(checkpoint).get("metrics") or {})
    metrics.setdefault("train_seconds", 0.0)
    return model, {**metrics, "initial_checkpoint": str(checkpoint)}


def _print_rounds_record(metrics: dict[str, Any]) -> None:
    """The rounds of plan / execute / retrain, as the checkpoint records them."""
    record = metrics.get("rounds")
    if not record:
        return
    print(f"rounds: {record['count']} x {record['episodes']} problems per planner ({', '.join(record['planners'])}, H = "
          f"{record['horizon']}), {record['added_trajectories']} executed trajectories added ({metrics['rounds_data']}); "
          f"{record['seconds']:.1f} s of planning and fine-tuning after {metrics['first_train_seconds']:.1f} s of training")
    print("| round | " + " | ".join(f"{p} real / in-model" for p in record["planners"]) + " | one-step MSE on its data, before -> after |")
    print("|---" * (len(record["planners"]) + 2) + "|")
    for r in record["per_round"]:
        cells = " | ".join(f"{100 * r['planners'][p]['success']:.0f}% / {100 * r['planners'][p]['model_success']:.0f}%"
                           for p in record["planners"])
        before, after = (r["mse_round_data_before"], r["mse_round_data_after"])
        mse = "-" if before is None or after is None else f"{before:.4g} -> {after:.4g}"
        print(f"| {r['round']} | {cells} | {mse} |")


def _print_ensemble_record(metrics: dict[str, Any]) -> None:
    """The state models' action bounds and an ensemble's members, as the checkpoint records them."""
    bounds = metrics.get("action_bounds")
    if bounds:
        source = (f"the data's {bounds['percentile']:g}/{100 - bounds['percentile']:g} percentiles" if bounds["source"] == "data"
                  else "the task's bounds")
        print(f"action bounds ({source}): low {', '.join(f'{x:.3g}' for x in bounds['low'])}; "
              f"high {', '.join(f'{x:.3g}' for x in bounds['high'])}")
    if metrics.get("members"):
        judge = (f"judged on the held-out member (one-step MSE {metrics['val_mse_judge']:.4g})" if metrics["judge"]
                 else "no held-out judge")
        print(f"ensemble: {metrics['members']} bootstrapped members, planning on the mean of {metrics['planning_members']}, "
              f"{judge}; disagreement weight {metrics['disagreement_weight']:g} (mean one-step disagreement on the "
              f"validation split {metrics['val_disagreement']:.3g})")


def _add_eval_model(sub: argparse._SubParsersAction, full: bool) -> None:
    p = sub.add_parser("eval-model", help="one-step and k-step error of a world model on a data set's validation split")
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--data", required=True, help="data set (with frames for a visual model)")
    p.add_argument("--k", type=int, default=10, help="model steps of the open-loop rollouts (default: %(default)s)")
    p.add_argument("--split", choices=["val", "train"], default="val")
    p.add_argument("--png", default=None, help="visual model with a decoder: write predicted-against-real frames to this PNG")
    p.add_argument("--encoder", default="", metavar="MOD:FACTORY",
                   help="the user encoder the checkpoint names: code named in a checkpoint runs only when named here too")
    p.add_argument("--geometry-pairs", type=int, default=256, metavar="N",
                   help="visual model: random state pairs of the task over which the rank correlation of latent distance "
                   "with true distance (Euclidean and wall-aware) and distance against displacement are measured; "
                   "0: not measured (default: %(default)s)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write every number measured to this JSON file")
    p.set_defaults(func=_run_eval_model)


def _run_eval_model(args: argparse.Namespace) -> int:
    from wmplan.platform.data import read_dataset
    from wmplan.platform.models import evaluate_model, is_pixel_model
    from wmplan.platform.models.visual import prediction_strip, write_png
    from wmplan.platform.registry import load_model

    model = load_model(args.model, options={"allow_code": [args.encoder] if args.encoder else []})
    dataset = read_dataset(args.data)
    pixels = is_pixel_model(model)
    if args.png and not (pixels and getattr(model, "decoder", None) is not None):
        raise ConfigError("--png needs a visual model with a decoder")
    if args.geometry_pairs < 0 or args.geometry_pairs == 1:
        raise ConfigError(f"--geometry-pairs must be 0 (not measured) or >= 2, got {args.geometry_pairs}")
    try:
        result = evaluate_model(model, dataset, k=args.k, split=args.split, geometry_pairs=args.geometry_pairs)
        # arg-type: prediction_strip takes a VisualWorldModel; --png was checked above to come with a pixel model with a decoder.
        strip = prediction_strip(model, dataset.split(args.split), k=args.k, frameskip=dataset.frameskip) if args.png else None  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    space, via = ("latent", " (state probe)") if pixels else ("normalised", "")
    if (Path(args.model) / "config.json").is_file():
        from wmplan.platform.models import describe_training, read_checkpoint_info, training_summary

        training = training_summary(read_checkpoint_info(args.model))
        result = {**result, "model_training": training}
        print(f"model {args.model}: {describe_training(training)}")
    print("| metric | value |\n|---|---|")
    for key in ("one_step_error", "k_step_error", "one_step_mse", "k_step_mse", "wall_crossing_rate", "transitions", "windows"):
        value = result.get(key)
        label = key.replace("k_step", f"{args.k}_step") + (f" ({space})" if key.endswith("mse") else via if key.endswith("error") else "")
        print(f"| {label} | {'-' if value is None else f'{value:.4g}' if isinstance(value, float) else value} |")
    _print_geometry(result.get("geometry"), pixels=pixels, pairs=args.geometry_pairs, model=args.model)
    if args.json:
        import json

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"model": str(args.model), "data": str(args.data), **result}, indent=2))
        print(f"wrote {args.json}")
    if strip is not None:
        print(f"wrote {write_png(args.png, strip)}: rows of real (top) and predicted (bottom) frames, model steps 0..{args.k}")
    return 0


def _print_geometry(geometry: dict[str, Any] | None, *, pixels: bool, pairs: int, model: str) -> None:
    """eval-model's latent geometry: the rank correlations, a distance-against-displacement table
    and the gate's warning (:func:`wmplan.platform.models.geometry.check_geometry`)."""
    from wmplan.platform.models.geometry import GEOMETRY_THRESHOLD, SATURATION_FRACTION, LatentGeometry, check_geometry

    if not pixels:
        print("latent geometry: does not apply (a state model plans on the simulator's own state, normalised per "
              "coordinate: its distances are the task's)")
        return
    if geometry is None:
        why = "--geometry-pairs 0" if pairs == 0 else "the data set's task is not one of wmplan's own"
        print(f"latent geometry: not measured ({why})")
        return
    g = LatentGeometry.from_dict(geometry)

    def num(x: float | None, fmt: str = ".3f") -> str:
        return "-" if x is None or not math.isfinite(x) else format(x, fmt)

    wall = "" if g.spearman_path is None else f", wall-aware {num(g.spearman_path)}"
    unreachable = f" ({g.unreachable_pairs} pairs without a path left out)" if g.unreachable_pairs else ""
    print(f"\nlatent geometry ({g.pairs} random state pairs, seed {g.seed}): rank correlation of latent distance with "
          f"true distance: Euclidean {num(g.spearman_euclidean)}{wall}{unreachable}")
    print(f"distance against displacement ({g.pairs} random and {g.near_pairs} near pairs; true displacement in state "
          f"units; latent distance also as a fraction of a typical random pair's):")
    print("| true displacement | pairs | median latent distance | / typical |\n|---|---|---|---|")
    for b in g.bins:
        print(f"| {b.low:.3g} - {b.high:.3g} | {b.pairs} | {num(b.median_latent, '.4g')} | {num(b.relative, '.2f')} |")
    if g.saturation is not None:
        print(f"latent distance reaches {SATURATION_FRACTION:.0%} of its largest binned median from a displacement of "
              f"{g.saturation:.3g}")
    warning = check_geometry(g, model=model)
    print(warning if warning else f"geometry gate: passed (rank correlation {num(g.correlation)} >= {GEOMETRY_THRESHOLD:g})")


EXPERIMENT_ALIASES = {"task": ["--env"], "planners": ["--planner"], "horizons": ["--horizon"]}
PLAN_DEFAULTS = {"executor": "local", "tracking": False}
"""What makes ``wmplan plan`` of ``wmplan run``: the episodes planned in this process, no MLflow record."""


def _add_plan(sub: argparse._SubParsersAction, full: bool) -> None:
    p = sub.add_parser(
        "plan",
        help="plan an experiment's episodes in this process (no Ray, no MLflow unless asked), results to Parquet",
        description="'wmplan run' with --executor local and --no-tracking: plan seeded start/goal episodes with each "
        "planner in a world model, in this process, execute the plans in the real simulator, write every episode to "
        "Parquet and report success with a 95% Wald interval. Without --model, the task's default checkpoint is used, "
        "and created (data generated, model trained) when it does not exist.",
    )
    _experiment_arguments(p, full, defaults=PLAN_DEFAULTS)


def _add_run(sub: argparse._SubParsersAction, full: bool) -> None:
    p = sub.add_parser(
        "run",
        help="run an experiment on a Ray actor pool (local Ray by default), results to Parquet",
        description="Plan every episode of an experiment (task, model, planners, horizons) on Ray actors that each hold "
        "one world-model replica; write every episode to Parquet as it arrives. Without a config file the defaults "
        "run: the wall task with an auto-trained model, CEM, GD and GRASP. Keys of the config are flags, or "
        "--set KEY=VALUE (planner options: --set planners.grasp.noise_scale=0.01).",
    )
    _experiment_arguments(p, full, defaults={})


def _experiment_arguments(p: argparse.ArgumentParser, full: bool, *, defaults: dict[str, Any]) -> None:
    p.add_argument("config", nargs="?", default=None, help="experiment config, YAML or TOML (default: built-in defaults)")
    p.add_argument("--resume", default=None, metavar="RUN_ID", help="plan only the missing episodes of an earlier run")
    p.add_argument("--run-id", default=None, help="id of a new run (default: a time stamp)")
    if full:
        from wmplan.jobs.experiment import ExperimentConfig

        add_flags(p, ExperimentConfig, aliases=EXPERIMENT_ALIASES, defaults=defaults)
    p.set_defaults(func=lambda args: _run_experiment(args, defaults))


def _run_experiment(args: argparse.Namespace, defaults: dict[str, Any]) -> int:
    from wmplan.jobs.experiment import ExperimentConfig
    from wmplan.jobs.runner import run_experiment
    from wmplan.platform.workflow import format_summaries

    # A resumed run brings its own config; a file, a flag or --set given with --resume says where to run it.
    given = args.config or args.set or flag_overrides(ExperimentConfig, args)
    config = config_from_args(ExperimentConfig, args, args.config, defaults=defaults) if given or not args.resume else None
    if config is not None and not args.resume and config.model != "auto":
        config.check_model()  # the task fits, and no code named in the file runs: before anything starts
    result = run_experiment(config, resume=args.resume, run_id=args.run_id)
    print(f"run {result.run_id}: {result.planned} episodes planned in {result.seconds:.1f} s; results in {result.directory}")
    print(format_summaries(result.summaries))
    status = 0
    if result.failed_batches:
        print(f"wmplan: {result.failed_batches} batch(es) failed; their episodes are stored with the reason", file=sys.stderr)
        status = 1
    if result.tracking_error:
        print(f"wmplan: the run is not fully recorded in MLflow: {result.tracking_error}", file=sys.stderr)
        status = 1
    return status


def _add_ui(sub: argparse._SubParsersAction, full: bool) -> None:
    p = sub.add_parser("ui", help="open the MLflow UI on this directory's run records, bound to localhost")
    p.add_argument("--port", type=int, default=5000, help="port (default: %(default)s)")
    p.set_defaults(func=_run_ui)


def _run_ui(args: argparse.Namespace) -> int:
    import subprocess

    from wmplan.storage.mlflow import UI_RUNS_QUERY, tracking_uri

    uri = tracking_uri(Path.cwd())
    if uri.startswith(("http://", "https://")):
        print(f"runs are recorded on the tracking server {uri}: open that address in a browser")
        return 0
    mlflow = Path(sys.executable).with_name("mlflow")
    # One worker and no GenAI job runner: viewing runs needs neither, and the UI starts in seconds.
    command = [str(mlflow) if mlflow.exists() else "mlflow", "ui", "--backend-store-uri", uri,
               "--host", "127.0.0.1", "--port", str(args.port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    base = f"http://127.0.0.1:{args.port}"
    print(f"MLflow UI for {uri} at {base} (Ctrl-C stops it); wmplan's runs: {base}/#/experiments?{UI_RUNS_QUERY} "
          f"(the runs table; the UI's 'Model training' switch, not 'GenAI')", flush=True)
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 0


def _add_tune(sub: argparse._SubParsersAction, full: bool) -> None:
    p = sub.add_parser(
        "tune",
        help="an Optuna study of one planner's options on the Ray pool, resumable, tested on held-out pairs",
        description="Search a planner's options for the real-simulator success rate on a seeded tuning set of "
        "start/goal pairs, trials in parallel on warm Ray actors, pruning hopeless trials; then run the best "
        "options once on a held-out test set. Running the same study again finishes the requested trials. "
        "--space ITEM narrows or widens the search: name=LOW:HIGH[:log][:zero][:int], name=A,B,C, name=V, -name, +name=SPEC.",
    )
    p.add_argument("--config", default=None, help="study config, YAML or TOML (default: built-in defaults)")
    if full:
        from wmplan.tuning.study import TuneConfig

        add_flags(p, TuneConfig, aliases={"task": ["--env"]})
    p.set_defaults(func=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    from wmplan.tuning.study import TuneConfig, run_study

    config = config_from_args(TuneConfig, args, args.config)
    if config.model != "auto":
        config.check_model()  # the task fits, and no code named in the file runs: before Ray starts
    result = run_study(config, say=lambda m: print(m, file=sys.stderr, flush=True))
    s = result.test_summary
    print(f"study {result.study}: {result.finished_trials} trials finished; best trial {result.best_trial} "
          f"(tuning success {100 * result.best_tuning_success:.1f}%) with {result.best_options}")
    compute = (f"{result.best_transitions:,} model transitions per planner call"
               if result.best_transitions is not None else "a planner that declares no transition count")
    compute += f" (budget {result.budget:,})" if result.budget else " (no budget)"
    if result.best_sync_ratio is not None:
        compute += f", {result.best_sync_ratio:.3g} sync steps per lifted step"
    print(f"compute of the best options: {compute}")
    print(f"held-out test set ({s['count']} episodes, other pairs than the tuning set): success "
          f"{100 * s['success_rate']:.1f}% [{100 * s['success_low']:.1f}, {100 * s['success_high']:.1f}], "
          f"model success {100 * s['model_success_rate']:.1f}%; median time to success "
          f"{s['median_time_to_success_s']:.3g} s (whole budget {s['median_planning_time_s']:.3g} s)")
    return 0


def _add_bench(sub: argparse._SubParsersAction, full: bool) -> None:
    p = sub.add_parser("bench", help="benchmarks that reproduce the paper's comparisons",
                       description="Benchmarks that reproduce the GRASP paper's comparisons on the Ray pool.")
    bench = p.add_subparsers(title="benchmarks", metavar="BENCHMARK", required=True)
    s = bench.add_parser(
        "sweep",
        help="success against horizon for every planner, each tuned with the same budget",
        description="For every horizon and planner: an Optuna study of the same number of trials on a tuning set "
        "(trials: 0 runs the defaults), then the best options on held-out episodes; writes sweep.md (the paper's "
        "table) and summary.parquet, records the sweep in MLflow and prints the table. Running it again resumes. "
        "Horizons count model steps of 5 env steps.",
    )
    s.add_argument("--config", default=None, help="sweep config, YAML or TOML, e.g. benchmarks/sweep_wall.yaml (default: built-in defaults)")
    if full:
        from wmplan.tuning.sweep import SweepConfig

        add_flags(s, SweepConfig, aliases={"task": ["--env"]})
    s.set_defaults(func=_run_bench_sweep)
    h = bench.add_parser(
        "horizon",
        help="the paper's figure: success and time to success against horizon, equal compute, one sweep per config",
        description="Runs one sweep per config (as 'bench sweep': per planner and horizon an Optuna study whose "
        "trials all spend the same budget of model transitions, then held-out problems), then writes one Markdown "
        "report with success (95%% intervals) and time to success against horizon, and their plots. CPU configs: "
        "benchmarks/horizon/*.yaml; a GPU one: benchmarks/horizon_gpu.yaml. Running it again resumes.",
    )
    h.add_argument("configs", nargs="+", metavar="CONFIG", help="sweep configs, YAML or TOML (e.g. benchmarks/horizon/linear.yaml)")
    h.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of every config, e.g. --set trials=2 (repeatable)")
    h.add_argument("--report", default="runs/horizon.md", help="where the report is written (default: %(default)s)")
    h.set_defaults(func=_run_bench_horizon)


def _run_bench_sweep(args: argparse.Namespace) -> int:
    from wmplan.tuning.sweep import SweepConfig, run_sweep

    result = run_sweep(config_from_args(SweepConfig, args, args.config))
    print(result.markdown)
    where = f"; MLflow run {result.mlflow_run_id} (experiment wmplan-sweeps)" if result.mlflow_run_id else ""
    print(f"results in {result.directory} (sweep.md, summary.parquet, heldout/){where}")
    return 0


def _run_bench_horizon(args: argparse.Namespace) -> int:
    from wmplan.tuning.horizon import run_horizon

    report = run_horizon(args.configs, overrides=args.overrides, report=args.report)
    print(report.markdown)
    print(f"report in {report.path}; one sweep folder each: {', '.join(str(r.directory) for r in report.sweeps)}")
    return 0


def _add_dashboard(sub: argparse._SubParsersAction, full: bool) -> None:
    p = sub.add_parser("dashboard", help="open optuna-dashboard on the study storage, bound to localhost")
    p.add_argument("--storage", default="studies.journal", help="Optuna storage URL or journal file (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    p.set_defaults(func=_run_dashboard)


def _run_dashboard(args: argparse.Namespace) -> int:
    import subprocess

    if "://" not in args.storage and not Path(args.storage).exists():
        raise ConfigError(f"no study storage at {args.storage!r} (run 'wmplan tune' first, or give --storage)")
    exe = Path(sys.executable).with_name("optuna-dashboard")
    command = [str(exe) if exe.exists() else "optuna-dashboard", args.storage, "--host", "127.0.0.1", "--port", str(args.port)]
    print(f"optuna-dashboard for {args.storage} at http://127.0.0.1:{args.port} (Ctrl-C stops it)", flush=True)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 0


def _add_planners(sub: argparse._SubParsersAction, full: bool) -> None:
    p = sub.add_parser("planners", help="list the planners and their options with defaults")
    p.add_argument("name", nargs="?", help="show only this planner")
    p.set_defaults(func=_run_planners)


def _run_demo(args: argparse.Namespace) -> int:
    from wmplan.platform.demo import format_table, run_demo

    config = config_from_args(DemoConfig, args)
    rows = run_demo(
        model=config.model, planners=list(config.planners), horizons=config.horizons, problems=config.problems,
        tolerance=config.tolerance, seed=config.seed, device=config.device, overrides=config.planners,
        parameters=config.parameters(), progress=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    print(format_table(rows, tolerance=config.tolerance))
    return 0


def _run_planners(args: argparse.Namespace) -> int:
    from wmplan.platform.options import option_docs
    from wmplan.platform.planners import PLANNERS, planner_class

    names = [args.name] if args.name else sorted(PLANNERS)
    for name in names:
        cls = planner_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name}: {doc}")
        options: type = cls.Options
        docs = option_docs(options)
        for f in dataclasses.fields(options):
            default = f.default
            print(f"  {f.name} = {default!r}")
            if f.name in docs:
                print(textwrap.fill(docs[f.name], width=96, initial_indent="      ", subsequent_indent="      "))
        print()
    return 0


COMMANDS = (_add_demo, _add_data, _add_train, _add_eval_model, _add_plan, _add_run, _add_ui, _add_tune,
            _add_dashboard, _add_bench, _add_planners)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with ``command``, the flags generated from a config class only for that
    one (the others are listed, but their config classes, and torch, are not imported)."""
    parser = argparse.ArgumentParser(
        prog="wmplan",
        description="Planning with learned world models: GRASP and its baselines (GD, CEM, LatCo, MPPI).",
    )
    from wmplan import __version__

    parser.add_argument("--version", action="version", version=f"wmplan {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (anywhere on the command line; also WMPLAN_DEBUG=1)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub, command is None or add.__name__ == f"_add_{command.replace('-', '_')}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every error ends in one line on stderr (a traceback only with --debug or WMPLAN_DEBUG=1).

    Exit status: 0 done, 1 a failure of the run or of wmplan, 2 the user's input (config, files), 130 interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:cut] or os.environ.get("WMPLAN_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    argv = [a for i, a in enumerate(argv) if not (i < cut and a == "--debug")]
    command = next((a for a in argv[:cut] if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("wmplan: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `wmplan planners | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - every error becomes one line; --debug shows the traceback
        if debug:
            import traceback

            traceback.print_exc()
        from wmplan.platform.errors import RunInterrupted

        if isinstance(exc, RunInterrupted):
            print(f"wmplan: {exc}", file=sys.stderr)
            return EXIT_INTERRUPTED
        if isinstance(exc, _user_errors()):
            print(f"wmplan: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_USAGE
        hint = "" if debug else " (run again with --debug for the traceback)"
        print(f"wmplan: error: {type(exc).__name__}: {_one_line(exc)}{hint}", file=sys.stderr)
        return EXIT_FAILURE


def _one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (Ray and others write pages)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors caused by what the user asked for or pointed at: reported in one line, exit 2."""
    from wmplan.platform.data import DataError
    from wmplan.platform.models.checkpoint import CheckpointError
    from wmplan.storage.parquet import StorageError

    return (ConfigError, DataError, CheckpointError, StorageError)


if __name__ == "__main__":
    sys.exit(main())
