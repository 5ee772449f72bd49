"""Hyperparameter studies: an Optuna study of one planner's options, its trials run on warm Ray actors.

The driver asks Optuna for trials (ask/tell), turns each into chunks of episodes of a seeded
*tuning set*, and runs several trials at once on one :class:`~wmplan.jobs.pool.ActorPool` whose
actors load the world model once for the whole study. After each chunk the trial reports its
success rate so far, so the pruner can stop a hopeless trial early (single objective only: Optuna
cannot prune multi-objective studies). The study lives in a persistent storage (a journal file in
the working directory by default, a PostgreSQL URL on a cluster): running the same study again
finishes the requested number of trials, and trials left RUNNING by a killed driver are marked
failed with that reason. The best trial's options are then run once on a separate, held-out
*test set* of start/goal pairs; that result is what the study reports.

Equal compute: with a ``budget`` (model transitions per planner call, forward and backward), the
iterations are not searched; each trial's are fitted to the budget after its other options are
drawn (:func:`wmplan.tuning.trials.trial_options`). Every trial records its budget, predicted
transitions and (GRASP) ratio of sync steps to lifted steps as user attributes
(:data:`wmplan.tuning.trials.COMPUTE_ATTRS`); the result shows the best trial's.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import optuna
from optuna.trial import TrialState

from wmplan.config import ONE_PER_ITEM, Settings
from wmplan.jobs.actor import PlanActor, WorkItem
from wmplan.jobs.cluster import actor_resources, check_services, start_ray
from wmplan.jobs.experiment import ExperimentConfig
from wmplan.jobs.pool import ActorPool, Failure
from wmplan.jobs.runner import actor_arguments, failed_records
from wmplan.platform.data import read_dataset
from wmplan.platform.episode import EpisodeRecord, EpisodeSpec, snapshot_schedule, summarize
from wmplan.platform.errors import ConfigError, unknown_name_error
from wmplan.platform.options import require
from wmplan.platform.planners import PLANNERS, make_planner
from wmplan.platform.registry import make_task
from wmplan.platform.workflow import episode_specs
from wmplan.storage.parquet import write_records
from wmplan.storage.services import check_database_url, redact
from wmplan.tuning.spaces import DEFAULT_SPACES, Param, default_params, options_from_params, parse_space_overrides, suggest
from wmplan.tuning.trials import best_trial, compute_attrs, trial_options

__all__ = ["TuneConfig", "TuneResult", "run_study", "open_study", "TEST_SEED_OFFSET"]

TEST_SEED_OFFSET = 1_000_003
"""The held-out test set is drawn with ``seed + TEST_SEED_OFFSET``: other pairs than the tuning set's."""
FAIL_REASON = "fail_reason"


@dataclass(frozen=True, kw_only=True)
class TuneConfig(Settings):
    """A study of one planner on one task, model and horizon (and the settings every command shares)."""

    WHAT: ClassVar[str] = "study config"
    ALIASES: ClassVar[Mapping[str, str]] = {"chunk": "batch_size"}

    study: str = ""
    """Study name (default TASK-PLANNER-hH); running the same name again resumes it."""
    planner: str = "grasp"
    """The planner whose options are searched."""
    horizon: int = 5
    """Planning horizon in model steps."""
    trials: int = 30
    """Trials the study should have finished (complete, pruned or failed) when the command ends."""
    parallel: int = 2
    """Trials run at once (their batches share the actors)."""
    tuning_episodes: int = 40
    """Episodes of the tuning set each trial is scored on."""
    test_episodes: int = 100
    """Episodes of the held-out test set the best options are run on."""
    batch_size: int = 10
    """Episodes per actor call; the trial reports its success rate after each batch."""
    storage: str = ""
    """Optuna storage URL or journal file (default: studies.journal in the working directory)."""
    time_objective: bool = False
    """Add median planning time as a second objective (a Pareto front; no pruning)."""
    budget: int = 0
    """Model transitions per planner call (forward, plus backward where gradients are taken) each trial's
    iterations are fitted to, instead of searched; 0: no budget (GRASP's iterations end on a sync)."""
    snapshots: int = 20
    """Plan snapshots of each held-out test episode, evenly spaced over its iterations: time to success is the time
    until the first snapshot whose plan succeeds (20: every 5% of the budget; 0: off; the trials take none)."""
    space: tuple[str, ...] = field(default=(), metadata=ONE_PER_ITEM)
    """Search-space items (one per --space), e.g. 'noise_scale=0.001:0.1:log', 'state_lr=0.05', '-goal_weight'."""
    output: str = "studies"
    """Directory for the trials' and the test run's episode tables."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.planner not in PLANNERS:
            raise unknown_name_error("planner", self.planner, PLANNERS)
        for name in ("horizon", "trials", "parallel", "tuning_episodes", "test_episodes"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        require(self.budget >= 0, f"budget must be >= 0 (0: none), got {self.budget}")
        require(self.snapshots >= 0, f"snapshots must be >= 0 (0: off), got {self.snapshots}")
        parse_space_overrides(self.planner, list(self.space))  # validated now
        if self.budget:
            searched = [item for item in self.space if item.strip().lstrip("+").partition("=")[0].strip() == "iterations"]
            if searched:
                raise ConfigError(f"space item {searched[0]!r}: with a budget ({self.budget} transitions) the iterations are "
                                  "fitted to it, not searched; drop the item")

    @property
    def name(self) -> str:
        return self.study or f"{self.task}-{self.planner}-h{self.horizon}"

    @property
    def storage_url(self) -> str:
        return self.storage or "studies.journal"

    def search_space(self) -> tuple[Param, ...]:
        """The space trials are drawn from: the planner's default edited by ``space``, without
        ``iterations`` when there is a budget (they are fitted to it)."""
        space = parse_space_overrides(self.planner, list(self.space)) if self.space else DEFAULT_SPACES[self.planner]
        return tuple(p for p in space if not (self.budget and p.name == "iterations"))

    def trial_options(self, suggested: Mapping[str, Any]) -> dict[str, Any]:
        """The options a trial runs with (:func:`wmplan.tuning.trials.trial_options`)."""
        return trial_options(self.planner, suggested, horizon=self.horizon, budget=self.budget)

    def experiment(self) -> ExperimentConfig:
        """The execution settings shared with experiment runs (model, actors, cluster)."""
        return self.derive(ExperimentConfig, planners={self.planner: {}}, horizons=[self.horizon], tracking=False)


def open_study(config: TuneConfig) -> optuna.Study:
    """Create or load the study in its storage (journal file unless the URL names a database)."""
    url = config.storage_url
    database_errors: tuple[type[Exception], ...] = ()
    if "://" in url:
        from sqlalchemy.exc import SQLAlchemyError

        check_database_url(url, what=f"study storage {redact(url)}")  # not listening, or no driver: one line, not a hang
        storage: Any = url
        database_errors = (SQLAlchemyError,)
    else:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(url))
    directions: list[Literal["maximize", "minimize"]] = ["maximize", "minimize"] if config.time_objective else ["maximize"]
    pruner = optuna.pruners.NopPruner() if config.time_objective else optuna.pruners.MedianPruner(n_startup_trials=5)
    try:
        study = optuna.create_study(study_name=config.name, storage=storage, load_if_exists=True, directions=directions,
                                    sampler=optuna.samplers.TPESampler(seed=config.seed), pruner=pruner)
    except database_errors as exc:  # e.g. the database does not exist, or the user may not log in
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ConfigError(f"study storage {redact(url)}: {reason}") from None
    if len(study.directions) != len(directions):
        raise ConfigError(f"study {config.name!r} exists with {len(study.directions)} objective(s); "
                          f"time_objective={config.time_objective} asks for {len(directions)}")
    return study


@dataclass
class _Trial:
    trial: optuna.Trial
    options: dict[str, Any]
    chunks: list[list[EpisodeSpec]]
    done: int = 0
    records: list[EpisodeRecord] = field(default_factory=list)


@dataclass(frozen=True)
class TuneResult:
    """What a study reports: its best trial and that trial's options on the held-out test set."""

    study: str
    finished_trials: int
    best_trial: int
    best_options: dict[str, Any]
    best_tuning_success: float
    test_summary: dict[str, Any]
    test_pairs_disjoint: bool
    test_records: tuple[EpisodeRecord, ...] = ()
    """The held-out episodes of the best options (as written to OUTPUT/STUDY/test)."""
    budget: int = 0
    """Model transitions per planner call the trials were fitted to (0: none)."""
    best_transitions: int | None = None
    """The best options' predicted transitions per problem and planner call (None: the planner declares no count)."""
    best_sync_ratio: float | None = None
    """GRASP: the best options' sync steps per lifted step; None for other planners."""


def _item(config: TuneConfig, options: dict[str, Any], specs: Sequence[EpisodeSpec], plan_seed: int, *,
          snapshots: int = 0) -> WorkItem:
    marks = tuple(snapshot_schedule(make_planner(config.planner, horizon=config.horizon, **options).options.iterations, snapshots))
    return WorkItem(planner=config.planner, options=dict(options), horizon=config.horizon, specs=list(specs),
                    mode="open_loop", replan_every=1, plan_seed=plan_seed, budget=config.budget, snapshot_iterations=marks)


def _values(config: TuneConfig, records: Sequence[EpisodeRecord]) -> list[float]:
    s = summarize(records)
    values = [float(s["success_rate"])]
    if config.time_objective:
        t = s["median_planning_time_s"]
        values.append(float(t) if not math.isnan(t) else 1e9)  # no success: slowest possible
    return values


def run_study(config: TuneConfig, *, say: Callable[[str], None] = lambda m: None) -> TuneResult:
    """Run the study to ``config.trials`` finished trials, then the best options on the test set."""
    experiment = config.experiment()
    env = make_task(config.task)
    check_services(experiment, tracking=config.tracking, storage=config.storage_url)  # before any training or Ray
    experiment.prepare_model(say)
    goal_mode = config.goal_mode_used
    dataset = read_dataset(experiment.data_path) if env.needs_dataset_for_goals(goal_mode) else None
    tuning = episode_specs(env, horizon=config.horizon, count=config.tuning_episodes, seed=config.seed, dataset=dataset,
                           goal_mode=goal_mode)
    test = episode_specs(env, horizon=config.horizon, count=config.test_episodes, seed=config.seed + TEST_SEED_OFFSET,
                         dataset=dataset, goal_mode=goal_mode)
    space = config.search_space()
    study = open_study(config)
    if not study.get_trials(deepcopy=False):  # a new study tries the planner's defaults first (fitted to the budget)
        defaults = default_params(config.planner, space)
        if defaults is not None:
            study.enqueue_trial(defaults, user_attrs={"defaults": True})
    tracker = _start_tracking(config) if config.tracking else None
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(stale._trial_id, FAIL_REASON, "the driver running it stopped")  # noqa: SLF001
        study.tell(stale.number, state=TrialState.FAIL, skip_if_finished=True)
    try:
        result = _optimize(config, study, tracker, tuning, test, space, say)
    except BaseException:
        if tracker is not None:
            tracker.finish(study=study, test_summary={}, status="FAILED")
        raise
    if tracker is not None:
        tracker.finish(study=study, test_summary=result.test_summary)
    return result


def _start_tracking(config: TuneConfig) -> Any:
    import dataclasses

    from wmplan.storage.mlflow import tracking_uri
    from wmplan.tuning.tracking import StudyTracker

    tracker = StudyTracker(tracking_uri=tracking_uri(Path.cwd()), experiment="wmplan-studies")
    tracker.start(study_name=config.name, config=json.loads(json.dumps(dataclasses.asdict(config))))
    return tracker


def _optimize(config: TuneConfig, study: optuna.Study, tracker: Any, tuning: list[EpisodeSpec], test: list[EpisodeSpec],
              space: Sequence[Any], say: Callable[[str], None]) -> TuneResult:
    out = Path(config.output) / config.name

    def record(number: int) -> None:
        if tracker is not None:
            tracker.log_trial(trial=study.get_trials(deepcopy=False)[number], results_dir=out / f"trial-{number}")

    for finished_trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        record(finished_trial.number)  # trials of an earlier driver (logged once: the tracker skips known ones)
    experiment = config.experiment()
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))
    to_run = max(0, config.trials - finished)
    say(f"study {config.name!r}: {finished} trials finished, {to_run} to run, storage {config.storage_url}")

    ray = start_ray(experiment)
    resources, device, threads = actor_resources(ray, experiment)
    remote = ray.remote(max_restarts=0, max_task_retries=0, **resources)(PlanActor)
    make = lambda: remote.remote(**actor_arguments(experiment, device=device, threads=threads))  # noqa: E731
    chunks = [tuning[i : i + config.batch_size] for i in range(0, len(tuning), config.batch_size)]
    with ActorPool(make, lambda actor, item: actor.run.remote(item), size=config.actors) as pool:
        active: dict[int, _Trial] = {}
        asked = 0
        while asked < to_run or active:
            while asked < to_run and len(active) < config.parallel:
                trial = study.ask()
                try:
                    options = config.trial_options(suggest(trial, space))
                    attrs = compute_attrs(config.planner, options, horizon=config.horizon, budget=config.budget)
                except (ConfigError, ValueError) as exc:
                    study._storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, str(exc))  # noqa: SLF001
                    study.tell(trial, state=TrialState.FAIL)
                    record(trial.number)
                    asked += 1
                    continue
                trial.set_user_attr("options", options)
                for key, value in attrs.items():
                    trial.set_user_attr(key, value)
                state = _Trial(trial, options, chunks)
                ticket = pool.submit(_item(config, options, chunks[0], config.seed + trial.number))
                active[ticket] = state
                asked += 1
            if not active:
                break
            ticket, result = pool.next_result()
            state = active.pop(ticket)
            trial = state.trial
            if isinstance(result, Failure):
                write_records(out / f"trial-{trial.number}", f"{config.name}-trial-{trial.number}",
                              failed_records(item=_item(config, state.options, state.chunks[state.done], 0), reason=result.reason))
                trial.set_user_attr(FAIL_REASON, result.reason)
                study.tell(trial, state=TrialState.FAIL)
                record(trial.number)
                say(f"trial {trial.number} failed: {result.reason}")
                continue
            write_records(out / f"trial-{trial.number}", f"{config.name}-trial-{trial.number}", result)
            state.records.extend(result)
            state.done += 1
            if not config.time_objective:
                trial.report(_values(config, state.records)[0], step=len(state.records))
                if trial.should_prune():
                    study.tell(trial, state=TrialState.PRUNED)
                    record(trial.number)
                    say(f"trial {trial.number} pruned after {len(state.records)} episodes")
                    continue
            if state.done < len(state.chunks):
                active[pool.submit(_item(config, state.options, state.chunks[state.done], config.seed + trial.number))] = state
                continue
            values = _values(config, state.records)
            study.tell(trial, values if config.time_objective else values[0])
            record(trial.number)
            say(f"trial {trial.number}: success {100 * values[0]:.1f}% with {state.options}")

        best = _best_trial(study, config)
        test_records: list[EpisodeRecord] = []
        shutil.rmtree(out / "test", ignore_errors=True)  # a resumed study's test run replaces the earlier one
        for lo in range(0, len(test), config.batch_size):
            pool.submit(_item(config, best.params_options, test[lo : lo + config.batch_size], config.seed + TEST_SEED_OFFSET,
                              snapshots=config.snapshots))
        while pool.pending:
            _, result = pool.next_result()
            if isinstance(result, Failure):
                raise RuntimeError(f"the held-out test run failed: {result.reason}")
            write_records(out / "test", f"{config.name}-test", result)
            test_records.extend(result)
    test_summary = summarize(test_records)
    study.set_user_attr("test_success_rate", test_summary["success_rate"])
    study.set_user_attr("test_success_interval", [test_summary["success_low"], test_summary["success_high"]])
    study.set_user_attr("best_trial", best.number)
    attrs = compute_attrs(config.planner, best.params_options, horizon=config.horizon, budget=config.budget)
    ratio = "" if attrs["sync_ratio"] is None else f", {attrs['sync_ratio']:.3g} sync steps per lifted step"
    spent = "no transition count" if attrs["predicted_transitions"] is None else f"{attrs['predicted_transitions']} transitions"
    say(f"best trial {best.number}: {spent} per planner call (budget {config.budget or 'none'}){ratio}")
    disjoint = {tuple(s.start) for s in tuning}.isdisjoint({tuple(s.start) for s in test})
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))
    return TuneResult(study=config.name, finished_trials=finished, best_trial=best.number, best_options=best.params_options,
                      best_tuning_success=best.success, test_summary=test_summary, test_pairs_disjoint=disjoint,
                      test_records=tuple(test_records), budget=config.budget,
                      best_transitions=attrs["predicted_transitions"], best_sync_ratio=attrs["sync_ratio"])


@dataclass(frozen=True)
class _Best:
    number: int
    params_options: dict[str, Any]
    success: float


def _best_trial(study: optuna.Study, config: TuneConfig) -> _Best:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"study {config.name!r} has no complete trial to test")
    trial = best_trial(complete)
    options = trial.user_attrs.get("options")
    if options is None:
        options = config.trial_options(options_from_params(trial.params, config.search_space()))
    return _Best(trial.number, dict(options), float(trial.values[0]))
