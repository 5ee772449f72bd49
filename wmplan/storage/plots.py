"""Figures of stored results: pure functions from Parquet tables (or images) to matplotlib figures and PNG bytes.

Nothing here talks to MLflow or writes files: :mod:`wmplan.storage.tracking` logs what these
functions return. Figures are drawn on matplotlib's Agg canvas without pyplot, so drawing leaves no
global state behind and needs no display.

The tables are those of :mod:`wmplan.storage.schemas` (``episodes``, ``residuals``); the numbers
drawn are :func:`wmplan.platform.episode.summarize_rows` of the episode rows.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from wmplan.platform.envs import Env
from wmplan.platform.episode import summarize_rows
from wmplan.platform.stats import wald_interval
from wmplan.storage.parquet import select_group

__all__ = [
    "figure",
    "png_bytes",
    "draw_trajectory",
    "planner_offsets",
    "success_vs_horizon_figure",
    "success_vs_horizon_png",
    "success_time_vs_horizon_figure",
    "success_time_vs_horizon_png",
    "success_curves",
    "success_vs_iterations_png",
    "residual_grid",
    "residual_heatmap_png",
    "final_residual_vs_horizon_png",
    "trajectories_png",
    "START_COLOR",
    "GOAL_COLOR",
    "PATH_COLORS",
]

Row = Mapping[str, Any]
"""One ``episodes`` row (a dict from :meth:`pyarrow.Table.to_pylist`)."""

_SUMMARY_COLUMNS = ["task", "planner", "horizon", "success", "model_success", "planning_time_s", "failed",
                    "time_to_success_s", "transitions_to_success", "transitions"]


START_COLOR = (0.0, 0.75, 0.0)
"""Colour of the start marker (green)."""
GOAL_COLOR = (1.0, 0.0, 1.0)
"""Colour of the goal marker (magenta)."""
PATH_COLORS = {"agent": (0.0, 0.35, 1.0), "block": (1.0, 0.55, 0.0)}
"""Colour of each drawn path."""


def figure(*, width_in: float, height_in: float, dpi: float = 100.0) -> Any:
    """A blank ``matplotlib.figure.Figure`` of ``width_in x height_in`` inches on an Agg canvas
    (``fig.canvas``): no display, no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Any, *, tight: bool = False) -> bytes:
    """The PNG file of a matplotlib figure (drawn on whatever canvas it has); ``tight`` crops it to
    what is drawn, labels that stick out of the figure included."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight" if tight else None)
    return buf.getvalue()


def draw_trajectory(image: np.ndarray, *, env: Env, states: np.ndarray, goal: np.ndarray | None = None) -> np.ndarray:
    """Draw executed states on a render of the task: the image with paths and markers, same size.

    The task's env says what to draw and where: each of its tracked positions
    (:meth:`~wmplan.platform.envs.Env.plot_tracks`) is a line through its states, placed on the
    render with :meth:`~wmplan.platform.envs.Env.pixel_coords` (its ``world_extent`` and ``y_up``),
    with a filled circle at the start (green), a cross at the end, and, when ``goal`` is given, a
    star at the goal's position (magenta).

    Args:
        image: ``[S, S, 3]`` uint8 render of the task (``env.render(S)``).
        env: the task's simulator (any state; it is not stepped).
        states: ``[T, D_env]`` executed states, first the start.
        goal: ``[D_env]`` goal state, or None when unknown.

    Returns:
        ``[S, S, 3]`` uint8: pixel ``(c, r)`` of the result is pixel ``(c, r)`` of ``image``.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != image.shape[1] or image.shape[2] != 3:
        raise ValueError(f"image must be a square [S, S, 3] render, got shape {image.shape}")
    size = image.shape[0]
    dpi = 100.0
    fig = figure(width_in=size / dpi, height_in=size / dpi, dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(image, interpolation="nearest")
    ax.set_xlim(-0.5, size - 0.5)
    ax.set_ylim(size - 0.5, -0.5)
    ax.set_axis_off()
    marker = max(6.0, size / 24)
    goals = env.plot_tracks(np.asarray(goal)[None]) if goal is not None else {}
    for name, xy in env.plot_tracks(states).items():
        px = env.pixel_coords(xy, size=size)
        color = PATH_COLORS.get(name, (0.2, 0.2, 0.2))
        ax.plot(px[:, 0], px[:, 1], "-", color=color, lw=max(1.0, size / 200), alpha=0.9)
        ax.plot(px[-1, 0], px[-1, 1], "x", color=color, ms=marker, mew=2)
        ax.plot(px[0, 0], px[0, 1], "o", color=START_COLOR, ms=marker, mec="none")
        if name in goals:
            g = env.pixel_coords(goals[name][0], size=size)
            ax.plot(g[0], g[1], "*", color=GOAL_COLOR, ms=marker * 1.4, mec="none")
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _rows(episodes: pa.Table) -> list[Row]:
    """The episode rows with the columns the summaries need."""
    return episodes.select(_SUMMARY_COLUMNS).to_pylist() if episodes.num_rows else []


def _by_horizon(rows: Sequence[Row]) -> dict[str, tuple[list[int], list[dict[str, Any]]]]:
    """Per planner: its horizons in order and :func:`summarize_rows` of its episodes at each."""
    out = {}
    for planner in sorted({r["planner"] for r in rows}):
        mine = [r for r in rows if r["planner"] == planner]
        horizons = sorted({r["horizon"] for r in mine})
        out[planner] = (horizons, [summarize_rows([r for r in mine if r["horizon"] == h]) for h in horizons])
    return out


_SLOT = 0.8  # the share of the distance between two horizon ticks that the planners side by side fill


def planner_offsets(*, planners: Sequence[str], slot: float = _SLOT) -> dict[str, float]:
    """Each planner's horizontal offset from its horizon's tick, so that planners stand side by side.

    The planners split ``slot`` (a share of the unit distance between ticks) into equal widths, in
    the order given; an offset is the centre of its width (symmetric about 0; 0 for one planner).
    """
    width = slot / max(len(planners), 1)
    return {p: (i - (len(planners) - 1) / 2) * width for i, p in enumerate(planners)}


def _horizon_slots(rows: Sequence[Row]) -> tuple[dict[str, tuple[list[int], list[dict[str, Any]]]], dict[int, int]]:
    """:func:`_by_horizon` of the rows and each horizon's tick position (0, 1, ... in order)."""
    return _by_horizon(rows), {h: i for i, h in enumerate(sorted({r["horizon"] for r in rows}))}


def _horizon_axes(ax: Any, rows: Sequence[Row], slots: Mapping[int, int], *, ylabel: str, title: str) -> None:
    """One tick per horizon (evenly spaced, labelled with H), the labels, the legend and the title."""
    ax.set_xticks(list(slots.values()), [str(h) for h in slots])
    ax.set_xlim(-0.5, max(len(slots), 1) - 0.5)
    ax.set_xlabel("horizon H (model steps)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    if rows:
        ax.legend(loc="upper center", ncols=min(len({r["planner"] for r in rows}), 4), fontsize="small", frameon=False)
    ax.set_title(f"{rows[0]['task'] if rows else ''} {title}".strip())


def success_vs_horizon_figure(episodes: pa.Table) -> Any:
    """The figure of :func:`success_vs_horizon_png` (a ``matplotlib.figure.Figure``, not yet saved).

    Per horizon, one bar per planner side by side (:func:`planner_offsets`), its height the success
    rate (also marked by a point, so that a rate of 0 shows), its error bar the Wald 95% interval,
    ``successes/episodes`` above it.
    """
    fig = figure(width_in=6.0, height_in=4.0)
    ax = fig.add_subplot()
    rows = _rows(episodes)
    groups, slots = _horizon_slots(rows)
    offsets = planner_offsets(planners=list(groups))
    width = 0.9 * _SLOT / max(len(groups), 1)
    for k, (planner, (horizons, stats)) in enumerate(groups.items()):
        x = np.array([slots[h] + offsets[planner] for h in horizons], dtype=float)
        rate = np.array([s["success_rate"] for s in stats], dtype=float)
        low = np.array([s["success_low"] for s in stats], dtype=float)
        high = np.array([s["success_high"] for s in stats], dtype=float)
        ax.bar(x, rate, width=width, color=f"C{k}", label=planner,
               yerr=[np.clip(rate - low, 0.0, None), np.clip(high - rate, 0.0, None)], capsize=3,
               error_kw={"ecolor": "0.2", "elinewidth": 1.0})
        # the rate as a point too: a planner with no success still shows, in its colour, at 0
        ax.plot(x, rate, linestyle="none", marker="D", markersize=5, color=f"C{k}", markeredgecolor="0.2", markeredgewidth=0.6)
        for xi, top, s in zip(x, high, stats):
            ax.annotate(f"{s['successes']}/{s['count']}", (xi, top), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
    ax.set_ylim(-0.05, 1.3)  # room below 0 for a rate of 0's point, above 1 for the counts and the legend
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    _horizon_axes(ax, rows, slots, ylabel="success rate (95% Wald interval)", title="success against horizon")
    fig.tight_layout()
    return fig


def success_vs_horizon_png(episodes: pa.Table) -> bytes:
    """PNG: success rate against horizon, a bar per planner and horizon with its Wald 95% interval
    (:func:`success_vs_horizon_figure`).

    Only final results exist per episode, so this is the run's success over horizons, not over
    planner iterations.
    """
    fig = success_vs_horizon_figure(episodes)
    return png_bytes(fig)


def success_time_vs_horizon_figure(episodes: pa.Table) -> Any:
    """The figure of :func:`success_time_vs_horizon_png` (a ``matplotlib.figure.Figure``).

    Per planner a solid line through its median time to success (the paper's measure: the time
    until the first plan snapshot that succeeds) of the successful episodes at each horizon, and a
    dashed line through their median planning time of the whole fixed budget; points shifted by
    :func:`planner_offsets` so that planners at one horizon stand side by side (log scale; a
    horizon without a success has no point).
    """
    fig = figure(width_in=6.0, height_in=4.0)
    ax = fig.add_subplot()
    rows = _rows(episodes)
    groups, slots = _horizon_slots(rows)
    offsets = planner_offsets(planners=list(groups), slot=0.45)  # close to the tick: points, not bars
    for k, (planner, (horizons, stats)) in enumerate(groups.items()):
        x = [slots[h] + offsets[planner] for h in horizons]
        ax.plot(x, [s["median_time_to_success_s"] for s in stats], marker="o", color=f"C{k}", label=planner)
        ax.plot(x, [s["median_planning_time_s"] for s in stats], marker=".", linestyle="--", color=f"C{k}", alpha=0.6)
    if any(r["success"] and r["planning_time_s"] > 0 for r in rows):
        ax.set_yscale("log")
    _horizon_axes(ax, rows, slots, ylabel="median time to success (s; dashed: whole budget)", title="time to success against horizon")
    ax.margins(y=0.25)
    fig.tight_layout()
    return fig


def success_time_vs_horizon_png(episodes: pa.Table) -> bytes:
    """PNG: median time to success (s) of the successful episodes against horizon, one line per
    planner, the whole fixed budget's time dashed beside it (:func:`success_time_vs_horizon_figure`)."""
    fig = success_time_vs_horizon_figure(episodes)
    return png_bytes(fig)


def success_curves(episodes: pa.Table) -> dict[tuple[str, int], tuple[list[int], list[float], list[float], list[float]]]:
    """Per (planner, horizon): the snapshot iterations and the success rate after each, with its
    Wald 95% interval, from the episodes' ``success_by_iteration`` (groups without snapshots are left out)."""
    curves: dict[tuple[str, int], tuple[list[int], list[float], list[float], list[float]]] = {}
    rows = episodes.select(["planner", "horizon", "snapshot_iterations", "success_by_iteration"]).to_pylist() if episodes.num_rows else []
    for key in sorted({(r["planner"], r["horizon"]) for r in rows}):
        mine = [r for r in rows if (r["planner"], r["horizon"]) == key and r["snapshot_iterations"]]
        if not mine:
            continue
        iterations = mine[0]["snapshot_iterations"]
        mine = [r for r in mine if r["snapshot_iterations"] == iterations]
        stats = [wald_interval(sum(r["success_by_iteration"][k] for r in mine), len(mine)) for k in range(len(iterations))]
        curves[key] = (list(iterations), [s[0] for s in stats], [s[1] for s in stats], [s[2] for s in stats])
    return curves


def success_vs_iterations_png(episodes: pa.Table) -> bytes:
    """PNG: success rate in the real simulator of the plan after each snapshot iteration (the
    anytime curve), one line per planner and horizon, with Wald 95% intervals as a band."""
    fig = figure(width_in=6.0, height_in=4.0)
    ax = fig.add_subplot()
    curves = success_curves(episodes)
    for (planner, horizon), (iterations, rate, low, high) in curves.items():
        line = ax.plot(iterations, rate, marker="o", label=f"{planner}, H={horizon}")[0]
        ax.fill_between(iterations, low, high, alpha=0.15, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("planner iterations")
    ax.set_ylabel("success rate (95% Wald interval)")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend()
    ax.set_title("success against planner iterations")
    fig.tight_layout()
    return png_bytes(fig)


def residual_grid(residuals: pa.Table) -> np.ndarray:
    """``[I, H]`` mean over episodes of the residual at iteration ``i`` and step ``t`` (NaN where none)."""
    if residuals.num_rows == 0:
        return np.zeros((0, 0))
    it = residuals["iteration"].to_numpy().astype(np.int64)
    st = residuals["step"].to_numpy().astype(np.int64)
    val = residuals["residual"].to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN
    ok = np.isfinite(val)
    total = np.zeros((it.max() + 1, st.max() + 1))
    count = np.zeros_like(total)
    np.add.at(total, (it[ok], st[ok]), val[ok])
    np.add.at(count, (it[ok], st[ok]), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def residual_heatmap_png(residuals: pa.Table, *, title: str = "") -> bytes:
    """PNG: the mean (over episodes, NaN-aware) dynamics residual per planner iteration and step.

    Args:
        residuals: rows of the ``residuals`` table of one planner and horizon.
        title: the plot's title.
    """
    from matplotlib.colors import LogNorm

    grid = residual_grid(residuals)
    fig = figure(width_in=6.0, height_in=4.5)
    ax = fig.add_subplot()
    finite = grid[np.isfinite(grid)]
    norm = LogNorm(vmin=finite.min(), vmax=max(finite.max(), finite.min() * 1.0001)) if finite.size and finite.min() > 0 else None
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", origin="upper", interpolation="nearest", norm=norm, cmap="viridis")
    from matplotlib.ticker import MaxNLocator

    fig.colorbar(im, ax=ax, label=r"mean $\|F(s_t, a_t) - s_{t+1}\|$ over episodes")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step t")
    ax.set_ylabel("planner iteration (all calls, in order)")
    ax.set_title(title or "dynamics residual")
    fig.tight_layout()
    return png_bytes(fig)


def final_residual_vs_horizon_png(residuals: pa.Table) -> bytes:
    """PNG: per lifted planner, the mean residual at its last iteration against horizon."""
    fig = figure(width_in=6.0, height_in=4.0)
    ax = fig.add_subplot()
    planners = residuals["planner"].to_pylist()
    horizons = residuals["horizon"].to_numpy()
    for planner in sorted(set(planners)):
        xs, ys = [], []
        for h in sorted(set(horizons[np.array(planners) == planner].tolist())):
            grid = residual_grid(select_group(residuals, planner=planner, horizon=h))
            last = grid[-1] if grid.size else np.array([np.nan])
            xs.append(h)
            ys.append(float(np.nanmean(last)) if np.isfinite(last).any() else np.nan)
        ax.plot(xs, ys, marker="o", label=planner)
    ax.set_yscale("log")
    ax.set_xticks(sorted(set(horizons.tolist())))
    ax.set_xlabel("horizon H (model steps)")
    ax.set_ylabel("mean residual at the last iteration")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return png_bytes(fig)


def trajectories_png(panels: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """PNG: images side by side, each with its title (e.g. from :func:`draw_trajectory`)."""
    if not panels:
        raise ValueError("trajectories_png needs at least one panel")
    n = len(panels)
    fig = figure(width_in=3.0 * n, height_in=3.3)
    for i, (title, img) in enumerate(panels):
        ax = fig.add_subplot(1, n, i + 1)
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return png_bytes(fig)


