"""Experiment runs, on a Ray actor pool or in this process: every episode planned once, stored as it arrives, resumable.

A run gets an id and a directory ``OUTPUT/RUN_ID`` holding ``run.json`` (the resolved config, the
code version, the sha256 of the model's checkpoint, or of the files a plug-in model's options
name) and the Parquet tables of :mod:`wmplan.storage.parquet`. The driver validates everything
before Ray starts, prepares the world model (training it when the config says ``model: auto`` and
none exists), cuts the episodes into batches (work items), has an
executor plan them, writes each batch's records the moment they arrive, and shows progress with the
running success rate and the time left. The executor is the config's ``executor``: ``ray`` hands
the batches to a pool of actors (an idle actor takes the next batch, so faster actors do more;
each runs the torch threads of its CPU share, and CPU actors take a checkpoint's model from Ray's
object store, where the driver puts it once); ``local`` plans them one after another in this
process with the same actor class (``wmplan plan``), so both give the same records for the same
config (up to float rounding where their torch thread counts differ). If the driver dies, ``resume`` plans only the
episodes the run directory does not hold yet.
"""

from __future__ import annotations

import json
import math
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from wmplan.jobs.actor import PlanActor, WorkItem
from wmplan.jobs.cluster import LOG_FILE, actor_resources, check_services, log_to_file, start_ray, stop_logging_to_file
from wmplan.jobs.experiment import ExperimentConfig
from wmplan.jobs.pool import ActorPool, Failure
from wmplan.platform.data import read_dataset
from wmplan.platform.episode import EpisodeRecord, EpisodeSpec, summarize_rows
from wmplan.platform.errors import ConfigError, RunInterrupted
from wmplan.platform.models.checkpoint import describe_training
from wmplan.platform.options import build_options
from wmplan.platform.progress import Progress
from wmplan.platform.registry import load_model, make_task
from wmplan.platform.workflow import episode_specs
from wmplan.storage.parquet import SET_ASIDE_SUFFIX, completed_episodes, read_table, set_aside_unreadable, write_records

__all__ = ["RunResult", "RunInterrupted", "run_experiment", "new_run_id", "code_version", "failed_records", "actor_arguments",
           "shared_model"]

RUN_FILE = "run.json"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def code_version() -> str:
    """The git commit of the wmplan checkout (with ``+dirty`` for local changes), else the package version."""
    from wmplan import __version__

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True,
                               timeout=10, check=False).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"wmplan-{__version__}"


@dataclass(frozen=True)
class RunResult:
    """What a finished (or resumed) run produced."""

    run_id: str
    directory: Path
    summaries: dict[tuple[str, int], dict[str, Any]]
    """(planner, horizon) -> :func:`wmplan.platform.episode.summarize` of all its episodes."""
    planned: int
    """Episodes planned by this call (fewer than the run's total after a resume)."""
    seconds: float
    failed_batches: int
    tracking_error: str | None = None
    """Why recording in MLflow failed (the Parquet results are complete regardless); None if it did not."""
    ready_s: float = 0.0
    """Seconds from the start of planning until every actor had started and loaded the model (Ray's start
    included where this run started Ray); the local executor: until its model was loaded."""
    stored_s: tuple[float, ...] = ()
    """Seconds from the start of planning at which each batch was stored, in the order they were."""


def failed_records(*, item: WorkItem, reason: str) -> list[EpisodeRecord]:
    """The records of a batch that could not be planned: every episode failed with ``reason``."""
    return [
        EpisodeRecord(
            task=s.task, planner=item.planner, horizon=item.horizon, episode_id=s.episode_id, seed=s.seed,
            mode=item.mode, plan_seed=item.plan_seed, success=False, model_success=False,
            final_distance=math.inf, model_final_distance=math.inf, planning_time_s=0.0, iterations=0,
            replans=0, failed=True, error=reason, executed_states=s.start[None], actions=np.zeros((0, 2)),
        )
        for s in item.specs
    ]


def _work(config: ExperimentConfig, specs: dict[int, list[EpisodeSpec]], done: set[tuple[str, int, int]]) -> list[WorkItem]:
    items = []
    for h in config.horizons:
        for name in config.planners:
            todo = [s for s in specs[h] if (name, h, s.episode_id) not in done]
            options, snapshots = config.planner_options(name, h), tuple(config.snapshot_iterations(name, h))  # once per group
            for lo in range(0, len(todo), config.batch_size):
                batch = todo[lo : lo + config.batch_size]
                items.append(WorkItem(planner=name, options=dict(options), horizon=h, specs=batch,
                                      mode=config.mode, replan_every=config.replan_every,
                                      plan_seed=config.seed * 1_000_003 + batch[0].episode_id,
                                      snapshot_iterations=snapshots, budget=config.budget))
    return items


class _PlanningProgress(Progress):
    """Planning on stderr: episodes done, rate, ETA and the running success rate (a line every 10 s in a file)."""

    def __init__(self, total: int, *, stream: TextIO | None = None, every_s: float | None = None) -> None:
        super().__init__(stage="planning", total=total, unit="episodes", stream=stream, every_s=every_s)
        self.successes = 0

    def add(self, records: list[EpisodeRecord]) -> None:
        """Count a stored batch of episodes and their successes."""
        self.successes += sum(r.success for r in records)
        self.update(len(records), success=f"{100 * self.successes / max(1, self.done + len(records)):.1f}%")


def actor_arguments(config: ExperimentConfig, *, device: str, threads: int) -> dict[str, Any]:
    """The keyword arguments of :class:`PlanActor` for ``config``, whichever executor builds it."""
    return {"task": config.task, **config.model_arguments(), "device": device, "threads": threads}


def shared_model(ray: Any, config: ExperimentConfig, *, device: str) -> Any:
    """The config's checkpoint loaded once, here, and put in Ray's object store: the reference to give
    every :class:`PlanActor` as ``loaded`` (a replacement actor too), so no actor reads the checkpoint.

    None, each actor loading its own, for actors that plan on a GPU (each loads straight onto its
    device), plug-in models (their factory runs in each actor) and the task's exact dynamics.
    """
    if device != "cpu" or config.model_is_plugin or config.model_is_exact:
        return None
    arguments = config.model_arguments()
    model = load_model(arguments["model"], device="cpu", options=arguments["model_options"], task=make_task(config.task))
    return ray.put(model)


@dataclass
class _Timing:
    """When planning got going and when each batch was stored, in seconds from ``start``."""

    start: float = field(default_factory=time.monotonic)
    ready_s: float = 0.0
    stored_s: list[float] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.start


def _on_ray(config: ExperimentConfig, run_id: str, items: list[WorkItem], say: Callable[[str], None],
            timing: _Timing) -> Iterator[tuple[int, list[EpisodeRecord] | Failure]]:
    """The Ray executor: every item on a pool of warm actors (an idle one takes the next queued item), results as they arrive."""
    ray = start_ray(config)
    resources, device, threads = actor_resources(ray, config)
    remote = ray.remote(max_restarts=0, max_task_retries=0, **resources)(PlanActor)
    arguments = {**actor_arguments(config, device=device, threads=threads), "loaded": shared_model(ray, config, device=device)}
    names = (f"wmplan-{run_id}-actor-{n}" for n in range(1_000_000))

    def make() -> Any:
        return remote.options(name=next(names)).remote(**arguments)

    made = timing.now()
    with ActorPool(make, lambda actor, item: actor.run.remote(item), size=min(config.actors, len(items)),
                   max_attempts=config.max_attempts,
                   on_actor_lost=lambda i, why: say(f"\nactor lost during batch {i} ({why}); re-running it")) as pool:
        for item in items:
            pool.submit(item)
        while pool.pending:
            result = pool.next_result()
            if pool.ready_s:  # the last of the pool's first actors to answer (or the last so far)
                timing.ready_s = made + pool.ready_s[min(pool.size, len(pool.ready_s)) - 1]
            yield result


def _in_process(config: ExperimentConfig, items: list[WorkItem], timing: _Timing) -> Iterator[tuple[int, list[EpisodeRecord] | Failure]]:
    """The local executor: every item in this process, one after another, by one :class:`PlanActor`.

    As on Ray, an error raised by a batch's own code fails that batch (with its message), not the run.
    """
    import torch

    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for, but this machine has no CUDA device")
    device = "cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu"
    actor = PlanActor(**actor_arguments(config, device=device, threads=torch.get_num_threads()))
    timing.ready_s = timing.now()
    for index, item in enumerate(items):
        try:
            yield index, actor.run(item)
        except Exception as exc:  # noqa: BLE001 - the batch fails with its reason, as on an actor
            yield index, Failure(index=index, attempts=1, reason=f"{type(exc).__name__}: {exc}")


def _plan(config: ExperimentConfig, run_id: str, directory: Path, items: list[WorkItem], total: int,
          say: Callable[[str], None], timing: _Timing) -> int:
    """Plan every item with the config's executor, storing each batch as it arrives (and when, in ``timing``);
    returns the failed batches."""
    if not items:
        return 0
    failed_batches = 0
    results = _in_process(config, items, timing) if config.executor == "local" else _on_ray(config, run_id, items, say, timing)
    progress = _PlanningProgress(total)
    try:
        for index, result in results:
            if isinstance(result, Failure):
                failed_batches += 1
                result = failed_records(item=items[index], reason=f"batch failed after {result.attempts} attempt(s): {result.reason}")
            write_records(directory, run_id, result)
            timing.stored_s.append(timing.now())
            progress.add(result)
    finally:
        progress.close()
    return failed_batches


def _start_tracking(config: ExperimentConfig, run_id: str, meta: dict[str, Any], checkpoint_info: dict[str, Any]) -> Any:
    from wmplan.storage.mlflow import artifact_root, tracking_uri
    from wmplan.storage.tracking import ExperimentTracker

    uri = tracking_uri(Path.cwd())
    tracker = ExperimentTracker(tracking_uri=uri, experiment=config.name, artifact_location=artifact_root(uri))
    # The config as the run was started (a resumed run may run elsewhere, but it is the same run).
    tracker.start_run(run_id=run_id, task=config.task, code_version=meta.get("code_version", code_version()),
                      checkpoint_sha256=checkpoint_info.get("sha256"), config=meta["config"],
                      model_training=checkpoint_info.get("training"))
    return tracker


def _log_groups(tracker: Any, config: ExperimentConfig, directory: Path, specs: dict[int, list[EpisodeSpec]],
                env: Any, say: Callable[[str], None]) -> None:
    """Record every (planner, horizon) group that has stored episodes as a child run (a progress line
    through ``say`` every 10 s, with the rate and ETA, and one when done)."""
    stored = {(p, h) for p, h, _ in completed_episodes(directory)}
    groups = [(name, options, h) for h in config.horizons for name, options in config.planners.items() if (name, h) in stored]
    if not groups:
        return
    with Progress(stage="MLflow upload", total=len(groups), unit="groups", say=say) as shown:
        for name, options, h in groups:
            goals = {s.episode_id: s.goal for s in specs[h]}
            tracker.log_group(planner=name, horizon=h, options=options, results_dir=directory,
                              goals=goals, env=env)
            shown.update(1, last=f"{name} H={h}")


def run_experiment(
    config: ExperimentConfig | None = None,
    *,
    resume: str | None = None,
    run_id: str | None = None,
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    tracker: Any = None,
) -> RunResult:
    """Run (or resume) an experiment with its executor: a Ray actor pool, or this process.

    Args:
        config: the validated experiment; None with ``resume`` reads the run's own config.
        resume: a run id whose directory exists under the config's output: only its missing
            episodes are planned, with the config it was started with.
        run_id: the id of a new run (default: a time stamp plus random hex).
        say: where progress messages go.
        tracker: optional experiment tracker (see :mod:`wmplan.storage.tracking`) told about the run.
    """
    if resume:
        directory = Path(config.output if config else "runs") / resume
        run_file = directory / RUN_FILE
        if not run_file.exists():
            raise ConfigError(f"cannot resume {resume!r}: no {RUN_FILE} in {directory}")
        try:
            meta = json.loads(run_file.read_text())
            meta["config"].items()
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"cannot resume {resume!r}: {run_file} is damaged ({type(exc).__name__}: {exc})") from None
        # Where to run may change on resume (actors, cluster, device); what to run may not.
        where = {} if config is None else {"actors": config.actors, "address": config.address, "device": config.device,
                                           "executor": config.executor}
        config = build_options(ExperimentConfig, {**meta["config"], **where}, owner=f"run {resume!r}", item="key")
        run_id = resume
    else:
        config = config or ExperimentConfig()
        run_id = run_id or new_run_id()
        directory = Path(config.output) / run_id
        if (directory / RUN_FILE).exists():
            raise ConfigError(f"run {run_id!r} already exists in {directory}; resume it with --resume {run_id}")

    # Everything that can fail on the user's input fails here, before Ray starts.
    env = make_task(config.task)
    check_services(config, ray=config.executor == "ray")  # a Ray head or tracking store that does not answer: one line in seconds
    config.prepare_model(say)
    # sha256: a plug-in model's is of the files its options name; training: what the checkpoint cost to build.
    checkpoint_info: dict[str, Any] = {"sha256": config.model_sha256(), "training": config.model_training()}
    goal_mode = config.goal_mode_used
    dataset = read_dataset(config.data_path) if env.needs_dataset_for_goals(goal_mode) else None
    specs = {h: episode_specs(env, horizon=h, count=config.episodes, seed=config.seed, dataset=dataset, goal_mode=goal_mode)
             for h in config.horizons}

    directory.mkdir(parents=True, exist_ok=True)
    log_to_file(directory / LOG_FILE, mlflow=config.tracking)  # Ray's and MLflow's messages, not the terminal's
    if not resume:
        meta = {"run_id": run_id, "config": config.to_dict(), "code_version": code_version(),
                "checkpoint_sha256": checkpoint_info.get("sha256"), "model_training": checkpoint_info["training"],
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (directory / RUN_FILE).write_text(json.dumps(meta, indent=2))
    if resume:
        for part, reason in set_aside_unreadable(directory).items():
            say(f"set aside the unreadable {part} ({reason}) as {part}{SET_ASIDE_SUFFIX}; its batch is planned again")
    done = completed_episodes(directory)
    items = _work(config, specs, done)
    total = sum(len(i.specs) for i in items)
    say(f"run {run_id}: {total} episodes to plan ({len(done)} already stored) in {len(items)} batches -> {directory}")
    if checkpoint_info["training"] is not None:
        say(f"model {config.model_label()}: {describe_training(checkpoint_info['training'])}")

    tracker = _start_tracking(config, run_id, meta, checkpoint_info) if config.tracking else None
    timing = _Timing()
    failed_batches = 0
    status = "FAILED"
    tracking_error = None
    interrupted = False
    try:
        failed_batches = _plan(config, run_id, directory, items, total, say, timing)
        status = "FINISHED"
    except KeyboardInterrupt:
        # Every finished batch is already stored; a resumed run plans the rest and records all of it.
        interrupted, status = True, "KILLED"
    finally:
        if tracker is not None and interrupted:
            tracker.finish(status=status)
        elif tracker is not None:
            try:
                _log_groups(tracker, config, directory, specs, env, say)
            except Exception as exc:  # noqa: BLE001 - the results are safe in Parquet; say why the record is not
                tracking_error = f"{type(exc).__name__}: {exc}"
                say(f"recording the run in MLflow failed ({tracking_error}); the results are complete in {directory}")
                status = "FAILED"
            tracker.finish(status=status)
        stop_logging_to_file()
    seconds = timing.now()
    if interrupted:
        resume_command = f"wmplan run --resume {run_id}" + (f" --set output={config.output}" if config.output != "runs" else "")
        raise RunInterrupted(f"interrupted: {len(completed_episodes(directory))} episodes of run {run_id} are stored in "
                             f"{directory}; continue with: {resume_command}")
    if tracker is not None and tracking_error is None:
        from wmplan.storage.mlflow import runs_page_url

        server = tracker.tracking_uri.startswith(("http://", "https://"))
        page = runs_page_url(base_url=tracker.tracking_uri if server else "http://127.0.0.1:5000", experiment_id=tracker.experiment_id)
        say(f"recorded in MLflow ({tracker.tracking_uri}), experiment {config.name!r}, run {run_id}; browse it "
            + (f"at {page}" if server else f"with 'wmplan ui', at {page}"))

    table = read_table(directory).to_pylist()
    summaries: dict[tuple[str, int], dict[str, Any]] = {}
    for name in config.planners:
        for h in config.horizons:
            rows = [r for r in table if r["planner"] == name and r["horizon"] == h]
            summaries[name, h] = summarize_rows(rows)
    return RunResult(run_id=run_id, directory=directory, summaries=summaries, planned=total, seconds=seconds,
                     failed_batches=failed_batches, tracking_error=tracking_error, ready_s=timing.ready_s,
                     stored_s=tuple(timing.stored_s))
