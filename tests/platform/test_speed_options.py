"""The speed options every planner takes (``compile``, ``precision``) and loops that never wait for the device.

Each option's plans match the default path's within the tolerance stated at its test:
- ``compile=True``: the same plan up to float rounding (actions and final distances within
  ``COMPILE_ATOL``), the same transition counts;
- ``precision='bfloat16'``: final goal distances within ``BF16_ATOL`` of float32's on a small model.
"""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.platform.helpers import PoisonModel
from wmplan.platform.errors import ConfigError
from wmplan.platform.models import ResidualMLP
from wmplan.platform.planners import PLANNERS, Planner, make_planner, planner_class
from wmplan.platform.problems import reachable_problems

COMPILE_ATOL = 5e-3
"""Largest difference of a compiled plan's actions (bounds [-1, 1]) and final goal distances from the default
path's: float rounding of fused kernels, which Adam's normalised steps can amplify over a few iterations
(measured up to 2e-3 on GRASP with end='best' and rollout_states)."""
BF16_ATOL = 0.05
"""Largest difference of a bf16 plan's final goal distance from float32's (goals about 1 away)."""

# Small budgets that exercise every part of each loop (GRASP: two syncs, a final sync, CEM sync, best).
SMALL = {
    "gd": dict(iterations=12),
    "latco": dict(iterations=12),
    "cem": dict(iterations=3, samples=16, elites=4),
    "mppi": dict(iterations=3, samples=16, elites=4),
    "grasp": dict(iterations=12, sync_interval=5, sync_steps=2),
}
VARIANTS = [(name, options) for name, options in SMALL.items()] + [
    ("grasp", dict(iterations=12, sync_interval=5, sync_steps=2, end="best", rollout_states=True)),
    ("grasp", dict(iterations=12, sync_interval=5, sync_steps=2, end="sync", noise_decay=True)),
    ("grasp", dict(iterations=12, sync_interval=5, sync_steps=2, sync_mode="cem", sync_samples=6, sync_elites=2, end="best")),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(VARIANTS)]


def test_every_planner_is_covered():
    assert set(SMALL) == set(PLANNERS)


def small_model() -> ResidualMLP:
    return ResidualMLP(4, 2, hidden=16, depth=2, seed=0)


# -- options -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PLANNERS))
def test_speed_options_are_validated(name):
    options = planner_class(name).Options()
    assert options.compile is False and options.precision == "float32"  # the default path
    with pytest.raises(ConfigError, match=r"option 'precision' must be one of \['float32', 'bfloat16'\], got 'float16'"):
        make_planner(name, precision="float16")
    with pytest.raises(ConfigError, match="compile"):
        make_planner(name, compile="yes")
    with pytest.raises(ConfigError, match=r"precision must be 'float32' or 'bfloat16', got 'half'"):
        planner_class(name).Options(precision="half")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"compile must be True or False, got 1"):
        planner_class(name).Options(compile=1)  # type: ignore[arg-type]


# -- no host synchronisation inside the loops ----------------------------------------------------------------

# aten operators that wait for the device to hand a value to the host (bool(t), t.item(), float(t) all
# reach _local_scalar_dense) or whose output shape depends on values (nonzero, boolean indexing).
SYNCING_OPS = frozenset({"_local_scalar_dense", "is_nonzero", "nonzero", "nonzero_static", "masked_select", "equal", "allclose",
                         "unique", "_unique2", "unique_consecutive", "bincount", "repeat_interleave"})


class HostSyncs(TorchDispatchMode):
    """Records every operator that would make the host wait for the device, with where it was called.

    Besides the aten operators above, ``Tensor.cpu / tolist / numpy`` and ``torch.cuda.synchronize``
    are wrapped while it is active (:meth:`patch`). One exception: torch.optim's step counter lives
    on the host unless ``capturable=True``, so its ``.item()`` waits for nothing (calls from torch/optim
    are not recorded).
    """

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[str] = []

    def record(self, what: str) -> None:
        stack = traceback.extract_stack()[:-2]
        if any("torch/optim/" in frame.filename.replace("\\", "/") for frame in stack):
            return
        caller = next(f for f in reversed(stack) if "/torch/" not in f.filename.replace("\\", "/")
                      and f.name not in ("__torch_dispatch__", "wrapped"))
        self.hits.append(f"{what} at {caller.filename.rsplit('/', 1)[-1]}:{caller.lineno}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in SYNCING_OPS:
            self.record(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))

    def patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for owner, name in ((torch.Tensor, "cpu"), (torch.Tensor, "tolist"), (torch.Tensor, "numpy"), (torch.cuda, "synchronize")):
            original = getattr(owner, name)

            def wrapped(*args, _original=original, _name=name, **kwargs):
                self.record(_name)
                return _original(*args, **kwargs)

            monkeypatch.setattr(owner, name, wrapped)


def watch_loops(planner: Planner, monkeypatch: pytest.MonkeyPatch) -> HostSyncs:
    """Run the planner's optimisation (everything :meth:`Planner.plan` does between setting up and reporting) under :class:`HostSyncs`."""
    syncs = HostSyncs()
    optimize = type(planner)._optimize

    def watched(self, problem, generator, init_u):
        with pytest.MonkeyPatch.context() as patches:
            syncs.patch(patches)
            with syncs:
                return optimize(self, problem, generator, init_u)

    monkeypatch.setattr(type(planner), "_optimize", watched)
    return syncs


def test_the_sync_counter_sees_host_syncs(monkeypatch):
    """The counter can fail: it sees .item(), Python branching on a tensor, .cpu() and nonzero, and names the caller."""
    syncs = HostSyncs()
    x = torch.tensor([1.0, float("nan")])
    with pytest.MonkeyPatch.context() as patches:
        syncs.patch(patches)
        with syncs:
            x.sum().item()
            if torch.isfinite(x).all():
                pass
            x.cpu()
            torch.nonzero(x)
            bool(x[0] > 0)
    kinds = [hit.split(" at ")[0] for hit in syncs.hits]
    assert kinds.count("_local_scalar_dense") >= 3 and "cpu" in kinds and "nonzero" in kinds, syncs.hits
    assert all(hit.split(" at ")[1].startswith("test_speed_options.py:") for hit in syncs.hits), syncs.hits


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
def test_planner_loops_never_wait_for_the_device(name, options, precision, monkeypatch):
    """Snapshots, NaN bookkeeping, syncs and 'best' bookkeeping included: a poisoned problem fails on the device."""
    model = PoisonModel(small_model(), threshold=2.0)
    start, goal = reachable_problems(model.inner, 3, 4, seed=0)
    start[1] = 3.0  # problem 1's model output is NaN from the start
    planner = make_planner(name, horizon=4, precision=precision, **options)
    syncs = watch_loops(planner, monkeypatch)
    r = planner.plan(model, start, goal, seed=0, snapshot_iterations=[1, 2, planner.options.iterations])
    assert syncs.hits == []
    assert r.failed.tolist() == [False, True, False]  # the bookkeeping still happened
    assert sorted(r.snapshot_seconds) == [1, 2, planner.options.iterations]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.set_sync_debug_mode)")
@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
def test_planner_loops_never_sync_on_cuda(name, options, monkeypatch):
    model = small_model().cuda()
    start, goal = reachable_problems(model, 3, 4, seed=0, device="cuda")
    planner = make_planner(name, horizon=4, **options)
    optimize = type(planner)._optimize

    def strict(self, problem, generator, init_u):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return optimize(self, problem, generator, init_u)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(type(planner), "_optimize", strict)
    r = planner.plan(model, start, goal, seed=0, snapshot_iterations=[1, planner.options.iterations])
    assert not r.failed.any() and 0 < r.snapshot_seconds[1] <= r.snapshot_seconds[planner.options.iterations] <= r.wall_time_s


# -- precision='bfloat16' ----------------------------------------------------------------------------------


class AutocastProbe(ResidualMLP):
    """A residual MLP that records the autocast state and its layers' output dtype at every step."""

    def __init__(self) -> None:
        super().__init__(4, 2, hidden=16, depth=2, seed=0)
        self.seen: set[tuple[bool, torch.dtype]] = set()

    def step(self, state, action):
        hidden = self.net[0](torch.cat([state, action], dim=-1))
        self.seen.add((torch.is_autocast_enabled(state.device.type), hidden.dtype))
        return super().step(state, action)


@pytest.mark.parametrize("name", sorted(PLANNERS))
def test_bf16_evaluates_the_model_under_autocast_and_reports_in_float32(name):
    model = AutocastProbe()
    start, goal = reachable_problems(model, 2, 4, seed=0)
    r = make_planner(name, horizon=4, precision="bfloat16", **SMALL[name]).plan(model, start, goal, seed=0)
    # The search's steps run in bf16; the reporting rollout after it in float32 (plan's own states).
    assert (True, torch.bfloat16) in model.seen and (False, torch.float32) in model.seen
    assert r.actions.dtype == r.states.dtype == r.final_distance.dtype == torch.float32
    assert r.trace.loss.dtype == torch.float32


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
def test_bf16_plans_reach_what_float32_plans_reach(name, options):
    model = small_model()
    start, goal = reachable_problems(model, 8, 4, seed=1)
    fp32 = make_planner(name, horizon=4, **options).plan(model, start, goal, seed=0)
    bf16 = make_planner(name, horizon=4, precision="bfloat16", **options).plan(model, start, goal, seed=0)
    gap = (bf16.final_distance - fp32.final_distance).abs().max().item()
    assert gap <= BF16_ATOL, (gap, fp32.final_distance, bf16.final_distance)
    assert bf16.transitions == fp32.transitions
    assert not torch.equal(bf16.actions, fp32.actions)  # the option did something


# -- compile=True ----------------------------------------------------------------------------------------


class Branchy(ResidualMLP):
    """A model whose step reads a tensor's value into Python: it cannot compile to one graph."""

    def step(self, state, action):
        if float(state.detach().abs().max()) > 1e9:  # never true here: the eager path plans normally
            return state
        return super().step(state, action)


def test_a_model_that_cannot_compile_names_the_option():
    model = Branchy(4, 2, hidden=16, depth=2, seed=0)
    start, goal = reachable_problems(model, 2, 3, seed=0)
    with pytest.raises(RuntimeError, match=r"planner option compile=True: torch.compile could not compile .* with Branchy .*compile=False"):
        make_planner("gd", horizon=3, iterations=2, compile=True).plan(model, start, goal, seed=0)
    make_planner("gd", horizon=3, iterations=2).plan(model, start, goal, seed=0)  # the default path plans it


@pytest.mark.integration  # compiles a few graphs with the C++ compiler: tens of seconds on a CPU
@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
def test_compiled_plans_match_the_default_path(name, options):
    model = small_model()
    start, goal = reachable_problems(model, 3, 4, seed=2)
    snapshots = [1, options["iterations"]]
    eager = make_planner(name, horizon=4, **options).plan(model, start, goal, seed=0, snapshot_iterations=snapshots)
    planner = make_planner(name, horizon=4, compile=True, **options)
    for _ in range(2):  # the second call reuses the compiled graphs
        compiled = planner.plan(model, start, goal, seed=0, snapshot_iterations=snapshots)
        torch.testing.assert_close(compiled.actions, eager.actions, atol=COMPILE_ATOL * float(model.action_high[0]), rtol=0)
        torch.testing.assert_close(compiled.final_distance, eager.final_distance, atol=COMPILE_ATOL, rtol=0)
        assert (compiled.transitions, compiled.forward_transitions) == (eager.transitions, eager.forward_transitions)
        assert compiled.snapshot_transitions == eager.snapshot_transitions
