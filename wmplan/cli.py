"""The ``wmplan`` command: parses arguments, validates them, and calls one function per subcommand.

Errors a user can cause (a mistyped planner or option, a bad value) end with a one-line message
naming the problem and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from wmplan.platform.envs import DEFAULT_TASK
from wmplan.platform.errors import ConfigError

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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
    p.add_argument("--env", required=True, help="task: a built-in or registered name, or package.module:factory")
    p.add_argument("--episodes", type=int, default=None,
                   help="number of trajectories (default: 1000; with --frames, the task's visual recipe)")
    p.add_argument("--steps", type=int, default=0, help="env steps per trajectory (default: the task's, 100)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out fraction of trajectories (default: %(default)s)")
    p.add_argument("--frames", action="store_true", help="store a rendered RGB frame with every step")
    p.add_argument("--frame-size", type=int, default=64, help="frame side in pixels (default: %(default)s)")
    p.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    p.add_argument("--out", default=None, help="output file (default: data/ENV.parquet, with --frames data/ENV-pixels.parquet)")
    p.set_defaults(func=_run_data)


def _run_data(args: argparse.Namespace) -> int:
    import time

    from wmplan.platform.data import DataConfig, generate_dataset
    from wmplan.platform.registry import task_class
    from wmplan.platform.workflow import default_data_config, default_data_path

    task_class(args.env)  # an unknown task fails here
    obs = "pixels" if args.frames else "state"
    config = DataConfig(
        env=args.env, episodes=default_data_config(args.env, obs=obs).episodes if args.episodes is None else args.episodes,
        steps=args.steps,
        seed=args.seed, val_fraction=args.val_fraction, frames=args.frames, frame_size=args.frame_size,
    )
    out = args.out or default_data_path(args.env, obs=obs)
    from wmplan.platform.progress import Progress

    t0 = time.perf_counter()
    with Progress(stage="data", total=config.episodes, unit="trajectories") as shown:
        path = generate_dataset(config, out, workers=args.workers, progress=lambda done, total: shown.update_to(done))
    seconds = time.perf_counter() - t0
    steps = config.episodes * config.steps_per_episode
    print(f"wrote {path}: {config.episodes} trajectories, {steps} steps in {seconds:.1f} s ({steps / seconds:.0f} steps/s)")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a world model on a data set: on states, or on pictures with --obs pixels (safetensors + JSON)",
        description="Train a world model. --obs state (default) learns from env states; --obs pixels learns from the "
        "data set's frames only (generate them with 'wmplan data --frames'): an autoencoder is trained and frozen, "
        "then a predictor learns in its latent space. --encoder package.module:factory --encoder-weights FILE plugs "
        "in a frozen encoder of your own instead. Defaults that differ by --obs are shown as STATE/PIXELS.",
    )
    p.add_argument("--env", required=True, help="task: a built-in or registered name, or package.module:factory")
    p.add_argument("--obs", choices=["state", "pixels"], default="state", help="what the model sees (default: %(default)s)")
    p.add_argument("--data", default=None, help="data set (default: data/ENV.parquet, or data/ENV-pixels.parquet)")
    p.add_argument("--out", default=None, help="checkpoint directory (default: checkpoints/ENV, or checkpoints/ENV-pixels)")
    p.add_argument("--steps", type=int, default=None, help="predictor gradient steps (default: 8000/the task's visual recipe)")
    p.add_argument("--batch-size", type=int, default=256, help="windows per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: %(default)s)")
    p.add_argument("--rollout-steps", type=int, default=3, help="model steps unrolled in the loss (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=256, help="predictor hidden width (default: 256)")
    p.add_argument("--depth", type=int, default=3, help="predictor hidden layers (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto: the GPU when there is one (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: one per available core; default: %(default)s, measured fastest on a busy machine)")
    g = p.add_argument_group("pixels")
    g.add_argument("--encoder-steps", type=int, default=3000, help="autoencoder steps (default: %(default)s)")
    g.add_argument("--probe-steps", type=int, default=3000, help="steps of the state probe, for reporting only (default: %(default)s)")
    g.add_argument("--channels", type=int, default=32, help="encoder/decoder channels (default: %(default)s)")
    g.add_argument("--latent-channels", type=int, default=8, help="channels of the 8x-downsampled latent grid (default: %(default)s)")
    g.add_argument("--no-decoder", action="store_true", help="drop the decoder after training the encoder")
    g.add_argument("--encoder", default="builtin", help="a frozen encoder of your own, package.module:factory (default: %(default)s)")
    g.add_argument("--encoder-weights", default="", help="safetensors weights of --encoder")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from wmplan.platform.data import read_dataset
    from wmplan.platform.demo import resolve_device
    from wmplan.platform.registry import task_class
    from wmplan.platform.workflow import default_checkpoint, default_data_path, default_train_config, train_model

    task_class(args.env)  # an unknown task fails here
    pixels = args.obs == "pixels"
    data = Path(args.data) if args.data else default_data_path(args.env, obs=args.obs)
    out = Path(args.out) if args.out else default_checkpoint(args.env, obs=args.obs)
    options = dict(batch_size=args.batch_size, lr=args.lr, rollout_steps=args.rollout_steps, hidden=args.hidden, depth=args.depth,
                   seed=args.seed, threads=args.threads)
    options.update({"steps": args.steps} if args.steps is not None else {})
    if pixels:
        options.update(encoder_steps=args.encoder_steps, probe_steps=args.probe_steps, channels=args.channels, latent_channels=args.latent_channels,
                       decoder=not args.no_decoder and args.encoder == "builtin", encoder=args.encoder,
                       encoder_weights=args.encoder_weights)
    config = default_train_config(args.env, obs=args.obs, device=str(resolve_device(args.device)), **options)
    if not data.exists():
        raise ConfigError(f"data set {str(data)!r} does not exist; generate it with "
                          f"'wmplan data --env {args.env}{' --frames' if pixels else ''} --out {data}'")
    dataset = read_dataset(data)
    if dataset.env != args.env:
        raise ConfigError(f"data set {str(data)!r} is for task {dataset.env!r}, not {args.env!r}")

    from wmplan.platform.progress import StageProgress

    progress = StageProgress()  # each stage on stderr: redrawn on a terminal, a line every 10 s in a file
    try:
        model, metrics = train_model(dataset, config, out, progress=progress)
    finally:
        progress.close()
    evaluation = metrics["evaluation"]
    seconds = metrics.get("total_seconds", metrics["train_seconds"])
    summary = f"saved {out}: trained in {seconds:.1f} s"
    if pixels:
        summary += f" (encoder {metrics.get('encoder_seconds') or 0:.1f} s, predictor {metrics['train_seconds']:.1f} s); latent {metrics['latent_dim']} values"
        if metrics.get("val_reconstruction_mse") is not None:
            summary += (f"; validation reconstruction MSE {metrics['val_reconstruction_mse']:.3g} "
                        f"(the mean picture: {metrics['val_mean_picture_mse']:.3g})")
    if metrics.get("val_mse_before") is not None:
        space = "latent" if pixels else "normalised"
        summary += f"; validation one-step MSE ({space}) {metrics['val_mse_before']:.4g} -> {metrics['val_mse_after']:.4g}"
    if evaluation:
        via = " via the state probe" if pixels else ""
        summary += f"; one-step error {evaluation['one_step_error']:.4g}, {evaluation['k']}-step error {evaluation['k_step_error']:.4g} (env units{via})"
    print(summary)
    return 0


def _add_eval_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-model", help="one-step and k-step error of a world model on a data set's validation split")
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--data", required=True, help="data set (with frames for a visual model)")
    p.add_argument("--k", type=int, default=10, help="model steps of the open-loop rollouts (default: %(default)s)")
    p.add_argument("--split", choices=["val", "train"], default="val")
    p.add_argument("--png", default=None, help="visual model with a decoder: write predicted-against-real frames to this PNG")
    p.add_argument("--encoder", default="", metavar="MOD:FACTORY",
                   help="the user encoder the checkpoint names: code named in a checkpoint runs only when named here too")
    p.set_defaults(func=_run_eval_model)


def _run_eval_model(args: argparse.Namespace) -> int:
    from wmplan.platform.data import read_dataset
    from wmplan.platform.models import evaluate_model, is_pixel_model, load_world_model
    from wmplan.platform.models.visual import prediction_strip, write_png

    model = load_world_model(args.model, allow_code=[args.encoder] if args.encoder else [])
    dataset = read_dataset(args.data)
    pixels = is_pixel_model(model)
    if args.png and not (pixels and getattr(model, "decoder", None) is not None):
        raise ConfigError("--png needs a visual model with a decoder")
    try:
        result = evaluate_model(model, dataset, k=args.k, split=args.split)
        strip = prediction_strip(model, dataset.split(args.split), k=args.k, frameskip=dataset.frameskip) if args.png else None  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    space, via = ("latent", " (state probe)") if pixels else ("normalised", "")
    print("| metric | value |\n|---|---|")
    for key in ("one_step_error", "k_step_error", "one_step_mse", "k_step_mse", "wall_crossing_rate", "transitions", "windows"):
        value = result.get(key)
        label = key.replace("k_step", f"{args.k}_step") + (f" ({space})" if key.endswith("mse") else via if key.endswith("error") else "")
        print(f"| {label} | {'-' if value is None else f'{value:.4g}' if isinstance(value, float) else value} |")
    if strip is not None:
        print(f"wrote {write_png(args.png, strip)}: rows of real (top) and predicted (bottom) frames, model steps 0..{args.k}")
    return 0


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="plan episodes of a real task with a world model and judge them in the simulator",
        description="Plan seeded start/goal episodes with each planner in a trained world model, execute the plans "
        "in the real simulator and report success with a 95%% Wald interval. Without --model, the task's default "
        "checkpoint is used, and created (data generated, model trained) when it does not exist.",
    )
    p.add_argument("--env", required=True, help="task: a built-in or registered name, or package.module:factory")
    p.add_argument("--model", default=None, help="checkpoint directory (default: checkpoints/ENV or checkpoints/ENV-pixels by --obs, trained if missing)")
    p.add_argument("--obs", choices=["state", "pixels"], default="state",
                   help="what the default model sees, when no --model is given (default: %(default)s)")
    p.add_argument("--data", default=None, help="data set (default: data/ENV.parquet or data/ENV-pixels.parquet by --obs; goals that replay data come from its validation split)")
    p.add_argument("--planner", default="cem,gd,grasp", help="comma-separated planners (default: %(default)s)")
    p.add_argument("--horizon", default="5", help="comma-separated horizons in model steps, 5 env steps each (default: %(default)s)")
    p.add_argument("--episodes", type=int, default=50, help="episodes per planner and horizon (default: %(default)s)")
    p.add_argument("--mode", choices=["open_loop", "mpc"], default="open_loop")
    p.add_argument("--replan-every", type=int, default=1, help="model steps executed between MPC replans (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the episodes and planners (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("--set", "-s", action="append", default=[], metavar="PLANNER.OPTION=VALUE", help="override a planner option (repeatable)")
    p.add_argument("--encoder", default="", metavar="MOD:FACTORY",
                   help="the user encoder the checkpoint names: code named in a checkpoint runs only when named here too")
    p.set_defaults(func=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
    from wmplan.platform.data import read_dataset
    from wmplan.platform.demo import resolve_device
    from wmplan.platform.models import load_world_model
    from wmplan.platform.registry import task_class
    from wmplan.platform.workflow import default_checkpoint, default_data_path, format_outcomes, plan_task, prepare_model

    task_class(args.env)  # an unknown task fails here
    planners = _csv(args.planner)
    try:
        horizons = [int(h) for h in _csv(args.horizon)]
    except ValueError:
        raise ConfigError(f"--horizon must be comma-separated integers, got {args.horizon!r}") from None
    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    overrides = parse_overrides(args.set, planners)
    from wmplan.platform.planners import make_planner

    for p in planners:  # validate every option before any work
        for h in horizons:
            make_planner(p, horizon=h, **overrides[p])
    device = resolve_device(args.device)
    data = Path(args.data) if args.data else default_data_path(args.env, obs=args.obs)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.model:
        from wmplan.platform.models import check_checkpoint_task, read_checkpoint_info
        from wmplan.platform.registry import make_task

        env = make_task(args.env)
        check_checkpoint_task(read_checkpoint_info(args.model), task=args.env, state_dim=env.state_dim, action_dim=env.action_dim,
                              frameskip=env.frameskip, obs="pixels" if args.obs == "pixels" else None, where=repr(args.model))
        model = load_world_model(args.model, device=device, allow_code=[args.encoder] if args.encoder else [])
    else:
        model = prepare_model(args.env, data_path=data, checkpoint=default_checkpoint(args.env, obs=args.obs), obs=args.obs,
                              device=str(device), progress=say)
    dataset = read_dataset(data) if data.exists() else None
    outcomes = plan_task(env_name=args.env, model=model, planners=planners, options=overrides, horizons=horizons,
                         episodes=args.episodes, seed=args.seed, dataset=dataset, mode=args.mode,
                         replan_every=args.replan_every, device=str(device), progress=say)
    print(f"{args.env}, {args.mode}, {args.episodes} episodes per row; success judged in the real simulator")
    print(format_outcomes(outcomes))
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run an experiment on a Ray actor pool (local Ray by default), results to Parquet",
        description="Plan every episode of an experiment (task, model, planners, horizons) on Ray actors that each hold "
        "one world-model replica; write every episode to Parquet as it arrives. Without a config file the defaults "
        "run: the wall task with an auto-trained model, CEM, GD and GRASP. Keys of the config can be overridden "
        "with --set KEY=VALUE (planner options: --set planners.grasp.noise_scale=0.01).",
    )
    p.add_argument("config", nargs="?", default=None, help="experiment config, YAML or TOML (default: built-in defaults)")
    p.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--resume", default=None, metavar="RUN_ID", help="plan only the missing episodes of an earlier run")
    p.add_argument("--run-id", default=None, help="id of a new run (default: a time stamp)")
    p.set_defaults(func=_run_run)


def _run_run(args: argparse.Namespace) -> int:
    from wmplan.jobs.experiment import load_config
    from wmplan.jobs.runner import run_experiment
    from wmplan.platform.workflow import format_summaries

    # A resumed run brings its own config; a file or --set given with --resume says where to run it.
    resume_only = args.resume and not (args.config or args.set)
    config = None if resume_only else load_config(args.config, args.set, check_model=not args.resume)
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


def _add_ui(sub: argparse._SubParsersAction) -> None:
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


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="an Optuna study of one planner's options on the Ray pool, resumable, tested on held-out pairs",
        description="Search a planner's options for the real-simulator success rate on a seeded tuning set of "
        "start/goal pairs, trials in parallel on warm Ray actors, pruning hopeless trials; then run the best "
        "options once on a held-out test set. Running the same study again finishes the requested trials.",
    )
    p.add_argument("--task", default=DEFAULT_TASK, help="task: a built-in or registered name, or package.module:factory (default: %(default)s)")
    p.add_argument("--planner", default="grasp", help="planner whose options are searched (default: %(default)s)")
    p.add_argument("--horizon", type=int, default=5, help="horizon in model steps (default: %(default)s)")
    p.add_argument("--model", default="auto", help="checkpoint directory, or auto (default: %(default)s)")
    p.add_argument("--obs", choices=["state", "pixels"], default="state", help="what the auto model sees (default: %(default)s)")
    p.add_argument("--data", default="", help="data set (default: data/TASK.parquet, or data/TASK-pixels.parquet)")
    p.add_argument("--encoder", default="", metavar="MOD:FACTORY",
                   help="the user encoder the checkpoint names: code named in a checkpoint runs only when named here too")
    p.add_argument("--study", default="", help="study name (default: TASK-PLANNER-hH)")
    p.add_argument("--trials", type=int, default=30, help="finished trials wanted (default: %(default)s)")
    p.add_argument("--parallel", type=int, default=2, help="trials at once (default: %(default)s)")
    p.add_argument("--tuning-episodes", type=int, default=40, help="episodes per trial (default: %(default)s)")
    p.add_argument("--chunk", type=int, default=10, help="episodes between intermediate reports (default: %(default)s)")
    p.add_argument("--test-episodes", type=int, default=100, help="held-out episodes for the best options (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--storage", default="", help="Optuna storage URL or journal file (default: studies.journal)")
    p.add_argument("--time-objective", action="store_true", help="also minimise the median planning time (no pruning)")
    p.add_argument("--space", action="append", default=[], metavar="ITEM",
                   help="narrow or widen the search: name=LOW:HIGH[:log][:zero][:int], name=A,B,C, name=V, -name, +name=SPEC")
    p.add_argument("--actors", type=int, default=2, help="Ray actors (default: %(default)s)")
    p.add_argument("--output", default="studies", help="directory for the trials' episode tables (default: %(default)s)")
    p.set_defaults(func=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    from wmplan.tuning.study import TuneConfig, run_study

    config = TuneConfig(
        study=args.study, task=args.task, model=args.model, obs=args.obs, data=args.data, encoder=args.encoder,
        planner=args.planner, horizon=args.horizon,
        trials=args.trials, parallel=args.parallel, tuning_episodes=args.tuning_episodes, chunk=args.chunk,
        test_episodes=args.test_episodes, seed=args.seed, storage=args.storage, time_objective=args.time_objective,
        space=tuple(args.space), actors=args.actors, output=args.output,
    )
    if args.model != "auto" and not (Path(args.model) / "config.json").exists():
        raise ConfigError(f"model checkpoint {args.model!r} does not exist (no config.json there)")
    if args.model != "auto":
        config.experiment().check_model()  # the task fits, and no code named in the file runs: before Ray starts
    result = run_study(config, say=lambda m: print(m, file=sys.stderr, flush=True))
    s = result.test_summary
    print(f"study {result.study}: {result.finished_trials} trials finished; best trial {result.best_trial} "
          f"(tuning success {100 * result.best_tuning_success:.1f}%) with {result.best_options}")
    print(f"held-out test set ({s['count']} episodes, other pairs than the tuning set): success "
          f"{100 * s['success_rate']:.1f}% [{100 * s['success_low']:.1f}, {100 * s['success_high']:.1f}], "
          f"model success {100 * s['model_success_rate']:.1f}%")
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
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
    s.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable): trials=2, horizons=5,10, planners=cem,grasp, "
                   "options.grasp.iterations=200, space.grasp=-goal_weight")
    s.set_defaults(func=_run_bench_sweep)


def _run_bench_sweep(args: argparse.Namespace) -> int:
    from wmplan.tuning.sweep import load_sweep_config, run_sweep

    result = run_sweep(load_sweep_config(args.config, args.set))
    print(result.markdown)
    where = f"; MLflow run {result.mlflow_run_id} (experiment wmplan-sweeps)" if result.mlflow_run_id else ""
    print(f"results in {result.directory} (sweep.md, summary.parquet, heldout/){where}")
    return 0


def _add_dashboard(sub: argparse._SubParsersAction) -> None:
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
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (anywhere on the command line; also WMPLAN_DEBUG=1)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_demo(sub)
    _add_data(sub)
    _add_train(sub)
    _add_eval_model(sub)
    _add_plan(sub)
    _add_run(sub)
    _add_ui(sub)
    _add_tune(sub)
    _add_dashboard(sub)
    _add_bench(sub)
    _add_planners(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every error ends in one line on stderr (a traceback only with --debug or WMPLAN_DEBUG=1).

    Exit status: 0 done, 1 a failure of the run or of wmplan, 2 the user's input (config, files), 130 interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:cut] or os.environ.get("WMPLAN_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    argv = [a for i, a in enumerate(argv) if not (i < cut and a == "--debug")]
    args = build_parser().parse_args(argv)
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
