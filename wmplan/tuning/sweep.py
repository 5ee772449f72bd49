"""The paper's comparison in one command: success against horizon for every planner, equal tuning budgets.

For every horizon and every planner a sweep runs an Optuna study of ``trials`` trials on the
seeded tuning set (:func:`~wmplan.tuning.study.run_study`; the same storage for all, so a killed
sweep resumes), and the best options on ``test_episodes`` held-out pairs through the Ray pool;
with ``trials: 0`` every planner runs with its defaults (or the options the config fixes) on the
same held-out pairs (:func:`~wmplan.jobs.runner.run_experiment`). Every planner gets the same
trials, the same tuning set and the same held-out pairs at a horizon.

**A horizon counts model steps.** One model step packs ``frameskip = 5`` env steps (a 10-D model
action of five 2-D env actions), so horizon H executes 5H env steps. A Push-T goal replays 5H env
actions of a held-out (validation) trajectory, so H = 40 needs validation trajectories of at least
200 env steps: a sweep checks this before anything starts.

Layout of ``output`` (default ``runs/sweep-NAME``)::

    sweep.md                   the tables (paper form, in-model beside real success, options)
    summary.parquet            one row per (planner, horizon)
    plots/                     success and time to success against horizon (PNG)
    sweep.json                 what the studies depend on (task, checkpoint, data, seed, spaces)
    studies.journal            the Optuna studies (unless ``storage`` names another)
    studies/NAME-P-hH/         each study's trial and test episodes
    heldout/NAME-P-hH/         the held-out episodes (episodes/, residuals/, trajectories/) and
                               group.json, written last: a group with it is done and is not rerun
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from optuna.trial import TrialState

from wmplan.config import BY_PLANNER, Settings, load
from wmplan.jobs.cluster import actor_resources, start_ray
from wmplan.jobs.experiment import ExperimentConfig
from wmplan.jobs.runner import code_version, new_run_id, run_experiment
from wmplan.platform.data import read_dataset
from wmplan.platform.envs import DEFAULT_TASK
from wmplan.platform.episode import summarize_rows
from wmplan.platform.errors import ConfigError, unknown_name_error
from wmplan.platform.options import require
from wmplan.platform.planners import make_planner
from wmplan.platform.registry import make_task, task_class
from wmplan.platform.workflow import format_summaries
from wmplan.storage.parquet import read_table, write_records
from wmplan.tuning.spaces import parse_space_overrides
from wmplan.tuning.study import TEST_SEED_OFFSET, TuneConfig, open_study, run_study
from wmplan.tuning.trials import sync_ratio

__all__ = ["SweepConfig", "SweepResult", "load_sweep_config", "check_horizons", "run_sweep", "format_sweep"]

MLFLOW_EXPERIMENT = "wmplan-sweeps"
GROUP_FILE = "group.json"
SWEEP_FILE = "sweep.json"
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True, kw_only=True)
class SweepConfig(Settings):
    """A sweep: every planner at every horizon, each tuned with the same budget, judged on held-out pairs."""

    WHAT: ClassVar[str] = "sweep config"
    ALIASES: ClassVar[Mapping[str, str]] = {"chunk": "batch_size"}

    name: str = DEFAULT_TASK
    """Sweep name: its output folder, its studies (NAME-PLANNER-hH) and its MLflow run."""
    planners: list[str] = field(default_factory=lambda: ["cem", "gd", "grasp", "latco"])
    """Planners compared (one column each)."""
    horizons: list[int] = field(default_factory=lambda: [5, 10])
    """Horizons in model steps (one row each); one model step = frameskip (5) env steps."""
    trials: int = 6
    """Finished Optuna trials per planner and horizon (the equal tuning budget); 0: no tuning, every
    planner runs with its defaults and the fixed options."""
    tuning_episodes: int = 20
    """Episodes of the tuning set each trial is scored on."""
    test_episodes: int = 100
    """Held-out episodes per planner and horizon (other pairs than the tuning set; the paper: 500)."""
    options: dict[str, dict[str, Any]] = field(default_factory=dict, metadata=BY_PLANNER)
    """Fixed planner options, e.g. {grasp: {iterations: 200}}: they override the defaults and are not searched."""
    space: dict[str, list[str]] = field(default_factory=dict, metadata=BY_PLANNER)
    """Search-space items per planner in the grammar of 'wmplan tune --space', e.g. {grasp: ['-goal_weight']}."""
    budget_per_step: int = 0
    """The equal compute: model transitions (forward, plus backward where gradients are taken) per planner call and
    planned step, so a call at horizon H may spend budget_per_step x H; every planner's iterations are fitted to it
    (in its studies and its held-out runs). 0: each planner's iterations as its options give (or searched)."""
    snapshots: int = 20
    """Plan snapshots per held-out episode, evenly spaced over the budget: time to success is the time until the first
    snapshot whose plan succeeds (20: every 5% of the budget)."""
    parallel: int = 2
    """Trials of a study run at once."""
    batch_size: int = 10
    """Episodes per actor call, planned as one batch (a trial reports after each; the planning time
    of an episode is its batch's wall time)."""
    storage: str = ""
    """Optuna storage URL or journal file (default: OUTPUT/studies.journal)."""
    output: str = ""
    """Output folder (default runs/sweep-NAME)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name) is not None,
                f"name must be letters, digits, '_', '.' or '-', got {self.name!r}")
        require(isinstance(self.planners, list) and bool(self.planners) and len(set(self.planners)) == len(self.planners),
                f"planners must be a non-empty list without repeats, got {self.planners!r}")
        require(isinstance(self.horizons, list) and bool(self.horizons) and len(set(self.horizons)) == len(self.horizons)
                and all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in self.horizons),
                f"horizons must be a non-empty list of distinct integers >= 1, got {self.horizons!r}")
        require(self.trials >= 0, f"trials must be >= 0 (0: no tuning), got {self.trials}")
        for key in ("tuning_episodes", "test_episodes", "parallel"):
            require(getattr(self, key) >= 1, f"{key} must be >= 1, got {getattr(self, key)}")
        require(self.budget_per_step >= 0, f"budget_per_step must be >= 0 (0: none), got {self.budget_per_step}")
        require(self.snapshots >= 0, f"snapshots must be >= 0, got {self.snapshots}")
        for key in ("options", "space"):
            require(isinstance(getattr(self, key), Mapping), f"{key} must map planner names, got {getattr(self, key)!r}")
            for planner in getattr(self, key):
                if planner not in self.planners:
                    raise unknown_name_error("planner", planner, self.planners, where=f"in {key} (not among planners)")
        for planner in self.planners:
            options = self.options.get(planner, {})
            require(isinstance(options, Mapping), f"options.{planner} must map option names to values, got {options!r}")
            require("horizon" not in options, f"options.{planner}: horizons are set by 'horizons', not per planner")
            items = self.space.get(planner, [])
            require(isinstance(items, list) and all(isinstance(i, str) for i in items),
                    f"space.{planner} must be a list of search-space items (strings), got {items!r}")
            for h in self.horizons:
                self.experiment(planner, h)  # every option checked now, and that the budget fits
            parse_space_overrides(planner, self.space_items(planner))

    @property
    def directory(self) -> Path:
        return Path(self.output or f"runs/sweep-{self.name}")

    @property
    def storage_url(self) -> str:
        return self.storage or str(self.directory / "studies.journal")

    def group(self, planner: str, horizon: int) -> str:
        """The id of one (planner, horizon) cell: its study name and its held-out folder."""
        return f"{self.name}-{planner}-h{horizon}"

    def space_items(self, planner: str) -> list[str]:
        """The search-space items of ``planner``: the config's, then its fixed options as fixed values."""
        items = list(self.space.get(planner, []))
        searched = {p.name for p in parse_space_overrides(planner, items)}
        for name, value in self.options.get(planner, {}).items():
            items.append(f"{'' if name in searched else '+'}{name}={value}")
        return items

    def budget(self, horizon: int) -> int:
        """The transitions a planner call at ``horizon`` may spend (0: no budget)."""
        return self.budget_per_step * horizon

    def tune_config(self, planner: str, horizon: int) -> TuneConfig:
        """The study of one cell."""
        return self.derive(TuneConfig, study=self.group(planner, horizon), planner=planner, horizon=horizon,
                           budget=self.budget(horizon), snapshots=self.snapshots,
                           trials=self.trials, parallel=self.parallel, tuning_episodes=self.tuning_episodes,
                           test_episodes=self.test_episodes, batch_size=self.batch_size, storage=self.storage_url,
                           space=tuple(self.space_items(planner)), output=str(self.directory / "studies"))

    def experiment(self, planner: str | None = None, horizon: int | None = None) -> ExperimentConfig:
        """The untuned held-out run of one cell on the actor pool (the same pairs a study tests on);
        without a cell, the sweep's execution settings (model, actors, cluster)."""
        planners = {planner: dict(self.options.get(planner, {}))} if planner else {p: dict(self.options.get(p, {})) for p in self.planners}
        return self.derive(ExperimentConfig, name=self.name, planners=planners,
                           horizons=[horizon] if horizon else list(self.horizons), episodes=self.test_episodes,
                           seed=self.seed + TEST_SEED_OFFSET, batch_size=self.batch_size,
                           output=str(self.directory / "heldout"), snapshots=self.snapshots,
                           budget=self.budget(horizon) if horizon else 0, tracking=False)


def load_sweep_config(path: str | Path | None, overrides: Sequence[str] = ()) -> SweepConfig:
    """Read a YAML or TOML sweep config (none: the defaults), apply ``KEY=VALUE`` overrides
    (:func:`wmplan.config.apply_overrides`), validate.

    Overrides: ``trials=2``, ``horizons=5,10``, ``planners=cem,grasp`` (the options and spaces of the
    planners left out go with them), ``options.grasp.iterations=200``, ``space.grasp=noise_scale=0.001:0.1:log``
    (appends one item).
    """
    return load(SweepConfig, path, overrides)


# -- checks before anything runs -----------------------------------------------------------------------


def check_horizons(config: SweepConfig) -> None:
    """Fail unless every horizon has goals: a task whose goals replay data (its env's
    ``needs_dataset_for_goals``, e.g. Push-T) replays frameskip x H env actions of a validation
    trajectory, which must be at least that long. Tasks that draw random pairs need no data.

    Raises:
        ConfigError: naming the horizon, the env steps it needs, and how to generate longer data.
    """
    task = task_class(config.task)
    if not task.needs_dataset_for_goals(config.goal_mode_used):
        return
    frameskip = task.frameskip
    path = config.experiment().data_path
    need = frameskip * max(config.horizons)
    pixels = " --frames" if config.obs == "pixels" else ""
    how = (f"generate longer data with 'wmplan data --env {config.task}{pixels} --steps {need} --out {path}' "
           f"(and train a model on it: 'wmplan train --env {config.task} --obs {config.obs} --data {path}')")
    if path.exists():
        longest = max((len(t.actions) for t in read_dataset(path).split("val")), default=0)
        have = f"the longest validation trajectory of {str(path)!r} has {longest}"
    elif config.model == "auto":
        longest = task.default_trajectory_steps
        have = f"model: auto would generate {str(path)!r} with {longest} env steps per trajectory"
    else:
        raise ConfigError(f"{config.task} goals replay validation trajectories of the data set {str(path)!r}, "
                          f"which does not exist; {how}")
    for h in sorted(config.horizons):
        if frameskip * h > longest:
            raise ConfigError(f"horizon {h} needs validation trajectories of at least {frameskip * h} env steps "
                              f"(frameskip {frameskip} x {h} model steps), but {have}; {how}, or drop the horizon")


def geometry_warning(config: Settings) -> str | None:
    """The latent-geometry gate of a sweep's model (:func:`wmplan.platform.models.geometry.check_geometry`): a one-line
    warning when a model that sees frames has a latent whose distances rank state pairs unlike the world's (Spearman
    below 0.9), else None. Uses the geometry stored in the checkpoint's metrics when there is one, else measures it
    (seconds); state models, the task's exact dynamics and plug-in models are not gated."""
    from wmplan.platform.models import checkpoint_obs, load_world_model, read_checkpoint_info
    from wmplan.platform.models.geometry import check_geometry, measure_geometry

    if config.model_is_plugin or config.model_is_exact:
        return None
    info = read_checkpoint_info(config.checkpoint)
    if checkpoint_obs(info) != "pixels":
        return None
    geometry = (info.get("metrics") or {}).get("geometry")
    if geometry is None:
        model = load_world_model(config.checkpoint, allow_code=config.allowed_code)
        geometry = measure_geometry(model, make_task(config.task))
    return check_geometry(geometry, model=config.model_label())


def _check_resumable(config: SweepConfig, checkpoint_sha256: str | None) -> None:
    """Write ``sweep.json``, or check that an earlier sweep of this name tuned on the same things."""
    fixed: dict[str, Any] = {"task": config.task, "checkpoint_sha256": checkpoint_sha256,
             "data": str(config.experiment().data_path), "seed": config.seed,
             "tuning_episodes": config.tuning_episodes, "chunk": config.batch_size,
             "budget_per_step": config.budget_per_step, "goal_mode": config.goal_mode_used}
    if config.model_is_plugin:  # its files' sha256 (if its options name any) and what loads them
        fixed["model"] = {"spec": config.model, "options": config.to_dict()["model_options"]}
    spaces = {p: config.space_items(p) for p in config.planners}
    path = config.directory / SWEEP_FILE
    old = json.loads(path.read_text()) if path.exists() else {**fixed, "spaces": {}}
    changed = [k for k in fixed if old.get(k) != fixed[k]]
    changed += [f"the search space of {p}" for p in spaces if p in old["spaces"] and old["spaces"][p] != spaces[p]]
    if changed:
        raise ConfigError(f"sweep {config.name!r} in {str(config.directory)!r} was run with another {changed[0]} "
                          f"(see {path}); its studies would mix both: use another name or output")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**fixed, "spaces": {**old["spaces"], **spaces}}, indent=2))


def _device_name(ray: Any, device: str) -> str:
    """'cpu', or 'cuda' with the cluster's accelerator types (e.g. 'cuda (H100)')."""
    if device != "cuda":
        return device
    kinds = sorted(k.split(":", 1)[1] for k in ray.cluster_resources() if k.startswith("accelerator_type:"))
    return f"cuda ({', '.join(kinds)})" if kinds else "cuda"


# -- one cell ------------------------------------------------------------------------------------------


def _cell(config: SweepConfig, planner: str, horizon: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Tune (or not) one (planner, horizon) and run it on the held-out pairs, unless that is stored.

    Returns ``group.json``'s ``result``: trials, best_trial, best_tuning_success, options.
    """
    group = config.group(planner, horizon)
    folder = config.directory / "heldout" / group
    if config.trials:
        tune = config.tune_config(planner, horizon)
        finished = len(open_study(tune).get_trials(deepcopy=False, states=_FINISHED))
        # Stored held-out episodes are current if no trial finished since (fewer than asked: never).
        key = {"study": group, "storage": tune.storage_url, "finished_trials": max(finished, config.trials),
               "test_episodes": config.test_episodes}
    else:
        key = {"options": config.options.get(planner, {}), "test_episodes": config.test_episodes}
    marker = folder / GROUP_FILE
    if marker.exists():
        stored = json.loads(marker.read_text())
        if stored["key"] == key:
            say(f"{group}: held-out episodes stored, nothing to run")
            return stored["result"]
    shutil.rmtree(folder, ignore_errors=True)
    if config.trials:
        say(f"{group}: study of {config.trials} trials on {config.tuning_episodes} tuning episodes, "
            f"then {config.test_episodes} held-out episodes")
        tuned = run_study(tune, say=say)
        write_records(folder, group, tuned.test_records)
        key["finished_trials"] = tuned.finished_trials
        result = {"trials": tuned.finished_trials, "best_trial": tuned.best_trial,
                  "best_tuning_success": tuned.best_tuning_success, "options": tuned.best_options}
    else:
        say(f"{group}: no tuning; {config.test_episodes} held-out episodes with {config.options.get(planner) or 'the defaults'}")
        run_experiment(config.experiment(planner, horizon), run_id=group, say=say)
        result = {"trials": 0, "best_trial": None, "best_tuning_success": None,
                  "options": config.experiment(planner, horizon).planner_options(planner, horizon)}
    marker.write_text(json.dumps({"key": key, "result": result}, indent=2))
    return result


# -- results -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepResult:
    """What a sweep produced: one row per (planner, horizon), the tables and where they are."""

    name: str
    directory: Path
    rows: list[dict[str, Any]]
    """The rows of ``summary.parquet``."""
    markdown: str
    """The contents of ``sweep.md``."""
    device: str
    """Where the actors planned: 'cpu' or 'cuda (ACCELERATOR)'."""
    mlflow_run_id: str | None
    """The sweep's MLflow parent run (None without tracking)."""


SUMMARY_SCHEMA = pa.schema([
    ("task", pa.string()), ("planner", pa.string()), ("horizon", pa.int32()), ("count", pa.int32()),
    ("successes", pa.int32()), ("success_rate", pa.float64()), ("success_low", pa.float64()),
    ("success_high", pa.float64()), ("model_success_rate", pa.float64()), ("median_planning_time_s", pa.float64()),
    ("median_time_to_success_s", pa.float64()), ("median_transitions_to_success", pa.float64()),
    ("median_transitions", pa.float64()), ("budget", pa.int64()), ("sync_ratio", pa.float64()),
    ("failures", pa.int32()), ("trials", pa.int32()), ("best_trial", pa.int32()), ("best_tuning_success", pa.float64()),
    ("options", pa.string()), ("device", pa.string()),
])
"""``summary.parquet``: one row per (planner, horizon) with :func:`~wmplan.platform.episode.summarize`'s numbers
of its held-out episodes (``median_time_to_success_s``, ``median_transitions_to_success``: the paper's time to
success, of the successful ones; ``median_planning_time_s``: their whole fixed budget's time), the budget of a
planner call (transitions; 0: none) and the transitions spent, for GRASP the ratio of serial (sync) steps to lifted
steps of the options it ran with (null for others), the finished trials of its
study, its best trial and that trial's tuning success (null without tuning), the options it ran with
(JSON) and the device."""


def _summary_row(config: SweepConfig, planner: str, horizon: int, episodes: list[dict[str, Any]],
                 cell: Mapping[str, Any], device: str) -> dict[str, Any]:
    return {"task": config.task, "planner": planner, "horizon": horizon, **summarize_rows(episodes),
            "budget": config.budget(horizon), "sync_ratio": sync_ratio(make_planner(planner, horizon=horizon, **cell["options"])),
            "trials": cell["trials"], "best_trial": cell["best_trial"], "best_tuning_success": cell["best_tuning_success"],
            "options": json.dumps(cell["options"], sort_keys=True), "device": device}


def _percent(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


def _seconds(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f} s"


def _count(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:,.0f}"


def format_sweep(config: SweepConfig, rows: Sequence[Mapping[str, Any]], *, device: str) -> str:
    """``sweep.md``: the paper's table (a row per horizon, a column per planner, each cell
    ``success% [low, high] / median time of successful episodes``), in-model beside real success,
    and the options each cell ran with."""
    cell = {(r["planner"], r["horizon"]): r for r in rows}
    frameskip = task_class(config.task).frameskip
    tuning = (f"{config.trials} Optuna trials per planner and horizon on {config.tuning_episodes} tuning episodes, "
              f"best options" if config.trials else "no tuning: defaults and the fixed options")
    budget = (f"Equal compute: every planner call may spend {config.budget_per_step} x H model transitions "
              f"(forward, plus backward where gradients are taken), each planner's iterations fitted to it"
              if config.budget_per_step else "No common budget: each planner's own iterations")
    lines = [
        f"# Sweep {config.name}: {config.task}, open loop, success in the real simulator",
        "",
        f"Model {config.model_label()}, device {device}; {tuning}; {config.test_episodes} held-out episodes per cell "
        f"(other pairs than the tuning set). H in model steps of {frameskip} env steps each. {budget}. Cells: success "
        f"[95% interval] / median time to success of the successful episodes (the time until the first of "
        f"{config.snapshots} plan snapshots that succeeds in the simulator) (the whole budget's median time); each "
        f"episode planned in a batch of up to {config.batch_size}, and timed as its batch.",
        "",
        "| H | " + " | ".join(config.planners) + " |",
        "|---|" + "---|" * len(config.planners),
    ]
    for h in config.horizons:
        cells = []
        for p in config.planners:
            r = cell[p, h]
            cells.append(f"{_percent(r['success_rate'])} [{100 * r['success_low']:.1f}, {100 * r['success_high']:.1f}] / "
                         f"{_seconds(r['median_time_to_success_s'])} ({_seconds(r['median_planning_time_s'])})")
        lines.append(f"| {h} | " + " | ".join(cells) + " |")
    lines += ["", "## In-model success beside real success", "",
              format_summaries({(p, h): cell[p, h] for h in config.horizons for p in config.planners}), "",
              "## Options per planner and horizon", "",
              "| planner | H | trials | best trial | its tuning success | budget | transitions spent | "
              "to success | sync/lifted | options |", "|---|---|---|---|---|---|---|---|---|---|"]
    for h in config.horizons:
        for p in config.planners:
            r = cell[p, h]
            best = "-" if r["best_trial"] is None else str(r["best_trial"])
            tuned = "-" if r["best_tuning_success"] is None else _percent(r["best_tuning_success"])
            options = json.loads(r["options"])
            ratio = "-" if r["sync_ratio"] is None else f"{r['sync_ratio']:.3g}"
            lines.append(f"| {p} | {h} | {r['trials']} | {best} | {tuned} | {r['budget'] or '-'} | "
                         f"{_count(r['median_transitions'])} | {_count(r['median_transitions_to_success'])} | {ratio} | "
                         f"{', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in sorted(options.items())) or 'defaults'} |")
    return "\n".join(lines) + "\n"


def _write_summary(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(list(rows), schema=SUMMARY_SCHEMA), tmp)
    tmp.replace(path)


def _track(config: SweepConfig, episodes: pa.Table, rows: Sequence[Mapping[str, Any]], device: str,
           checkpoint_sha256: str | None) -> str:
    """One MLflow parent run for this sweep: the config, the metrics of every cell, the tables and plots."""
    from wmplan.storage.mlflow import tracking_uri
    from wmplan.storage.plots import success_time_vs_horizon_png, success_vs_horizon_png
    from wmplan.storage.tracking import ExperimentTracker, group_metrics

    tracker = ExperimentTracker(tracking_uri=tracking_uri(Path.cwd()), experiment=MLFLOW_EXPERIMENT)
    options: dict[str, dict[str, Any]] = {r["planner"]: {} for r in rows}
    for r in rows:
        options[r["planner"]][f"h{r['horizon']}"] = json.loads(r["options"])
    tracker.start_run(run_id=f"{config.name}-{new_run_id()}", task=config.task, code_version=code_version(),
                      checkpoint_sha256=checkpoint_sha256,
                      config={**config.to_dict(), "device": device, "tuned_options": options})
    status: Literal["FINISHED", "FAILED"] = "FAILED"
    try:
        stored = episodes.to_pylist()
        for r in rows:
            mine = [e for e in stored if e["planner"] == r["planner"] and e["horizon"] == r["horizon"]]
            metrics = {**group_metrics(mine), "trials": float(r["trials"])}
            tracker.log_metrics({f"{r['planner']}/{k}": v for k, v in metrics.items()}, step=r["horizon"])
        for name in ("sweep.md", "summary.parquet"):
            tracker.client.log_artifact(tracker.parent_run_id, str(config.directory / name))
        tracker.client.log_artifacts(tracker.parent_run_id, str(config.directory / "heldout"), artifact_path="heldout")
        tracker.log_plot("success_vs_horizon.png", lambda: success_vs_horizon_png(episodes))
        tracker.log_plot("success_time_vs_horizon.png", lambda: success_time_vs_horizon_png(episodes))
        status = "FINISHED"
    finally:
        tracker.finish(status=status)
    return str(tracker.parent_run_id)


def _write_plots(folder: Path, episodes: pa.Table) -> None:
    """``plots/success_vs_horizon.png`` and ``plots/success_time_vs_horizon.png`` of the held-out episodes."""
    from wmplan.storage.plots import success_time_vs_horizon_png, success_vs_horizon_png

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "success_vs_horizon.png").write_bytes(success_vs_horizon_png(episodes))
    (folder / "success_time_vs_horizon.png").write_bytes(success_time_vs_horizon_png(episodes))


def run_sweep(config: SweepConfig, *, say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> SweepResult:
    """Run (or resume) the sweep; write ``sweep.md`` and ``summary.parquet``; record it in MLflow.

    Everything that can fail on the input (a missing checkpoint, Push-T data too short for a
    horizon, a sweep of this name run on other things) fails before any study starts.
    """
    execution = config.experiment()
    if config.model != "auto":
        execution.check_model()  # a missing checkpoint, or a plug-in that does not resolve
    check_horizons(config)
    execution.prepare_model(say)
    warning = geometry_warning(execution)
    if warning:
        say(f"warning: {warning}")
    sha = execution.model_sha256()
    _check_resumable(config, sha)
    ray = start_ray(execution)
    device = _device_name(ray, actor_resources(ray, execution)[1])
    say(f"sweep {config.name!r}: {len(config.planners)} planners x {len(config.horizons)} horizons on {device} -> {config.directory}")
    cells = {(p, h): _cell(config, p, h, say) for h in config.horizons for p in config.planners}

    folders = {key: config.directory / "heldout" / config.group(*key) for key in cells}
    tables = {key: read_table(folder) for key, folder in folders.items()}
    rows = [_summary_row(config, p, h, tables[p, h].to_pylist(), cells[p, h], device) for (p, h) in cells]
    markdown = format_sweep(config, rows, device=device)
    (config.directory / "sweep.md").write_text(markdown)
    _write_summary(config.directory / "summary.parquet", rows)
    episodes = pa.concat_tables(tables.values())
    _write_plots(config.directory / "plots", episodes)
    run_id = _track(config, episodes, rows, device, sha) if config.tracking else None
    return SweepResult(name=config.name, directory=config.directory, rows=rows, markdown=markdown, device=device,
                       mlflow_run_id=run_id)
