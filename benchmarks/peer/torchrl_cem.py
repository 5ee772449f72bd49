"""wmplan's CEM against torchrl's CEMPlanner on the same model, samples, elites and iterations.

Run it in the peer environment (``bash benchmarks/peer/setup.sh`` makes it; torchrl is never a
dependency of wmplan):

    benchmarks/peer/.venv/bin/python benchmarks/peer/torchrl_cem.py
    benchmarks/peer/.venv/bin/python benchmarks/peer/torchrl_cem.py --clock cpu --iterations 30

The model is benchmarks/planners.py's residual MLP (D = 32, A = 10, 3 x 256 hidden, actions in
[-1, 1], so torchrl's action units are wmplan's unit actions), the problems ``reachable_problems``
at H = 10. torchrl sees the model as a model-based environment whose reward is the decrease of the
terminal cost ``mean_d (s - g)^2`` along the rollout: the return of a rollout is then
``cost(s_0) - cost(s_H)``, which ranks samples as wmplan's terminal cost does. Both start from mean
0 and standard deviation 1 and clip samples to the bounds; they differ in small ways (wmplan keeps
the mean as sample 0 and refits a population standard deviation; torchrl refits torch.std's
unbiased one), so the final costs agree in size, not to the digit. Each is timed at B = 1 and at
B = 16, as one call on the batch and as one call per problem (torchrl's CEMPlanner batches too:
it expands the tensordict over the candidates), best of two; the final cost is the terminal MSE of
the model's rollout of the returned plan (torchrl returns only the first action, so its final mean
sequence is read as CEMPlanner stores it), mean over the problems.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs.model_based import ModelBasedEnvBase
from torchrl.modules.planners import CEMPlanner

from wmplan.platform.models import ResidualMLP
from wmplan.platform.planners import make_planner, rollout, terminal_cost
from wmplan.platform.problems import reachable_problems

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from batching import machine  # noqa: E402


class _Step(nn.Module):
    """One model step and its reward ``cost(s) - cost(s')``: a rollout's return is ``cost(s_0) - cost(s_H)``."""

    def __init__(self, model: ResidualMLP) -> None:
        super().__init__()
        self.model = model

    def forward(self, state: Tensor, action: Tensor, goal: Tensor) -> tuple[Tensor, Tensor]:
        nxt = self.model.step(state, action)
        return nxt, (terminal_cost(state, goal) - terminal_cost(nxt, goal))[..., None]


class GoalEnv(ModelBasedEnvBase):
    """The world model as a torchrl environment of any batch size, for goal ``goal`` carried in the tensordict."""

    def __init__(self, model: ResidualMLP) -> None:
        module = TensorDictModule(_Step(model), in_keys=["state", "action", "goal"], out_keys=["state", "reward"])
        super().__init__(module, device="cpu")
        d, a = model.state_dim, model.action_dim
        self.observation_spec = Composite(state=Unbounded((d,)), goal=Unbounded((d,)))
        self.action_spec = Bounded(model.action_low, model.action_high, (a,))
        self.reward_spec = Unbounded((1,))

    def _reset(self, tensordict: TensorDict, **kwargs: object) -> TensorDict:
        return tensordict

    def _set_seed(self, seed: int | None) -> None:
        torch.manual_seed(0 if seed is None else seed)


@contextlib.contextmanager
def final_means() -> Iterator[dict[str, Tensor]]:
    """Catch the action means ``[..., 1, H, A]`` CEMPlanner stores after each iteration (it returns only the first action)."""
    seen: dict[str, Tensor] = {}
    original = TensorDict.set_

    def set_(self: TensorDict, key: object, value: Tensor, *args: object, **kwargs: object) -> TensorDict:
        if key == ("stats", "_action_means"):
            seen["mean"] = value
        return original(self, key, value, *args, **kwargs)  # type: ignore[arg-type]

    TensorDict.set_ = set_  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        TensorDict.set_ = original  # type: ignore[method-assign]


def torchrl_plan(planner: CEMPlanner, start: Tensor, goal: Tensor, seed: int) -> Tensor:
    """torchrl's plan ``[B, H, A]`` for the problems, from the global generator seeded with ``seed``."""
    torch.manual_seed(seed)
    with final_means() as seen, torch.no_grad():
        planner.planning(TensorDict({"state": start, "goal": goal}, batch_size=[start.shape[0]]))
    return seen["mean"][..., 0, :, :]


def planned(fn: Callable[[Tensor, Tensor], Tensor], start: Tensor, goal: Tensor, *, one_call: bool) -> Callable[[], Tensor]:
    """A run of ``fn`` on the problems: one call on the batch, or one call per problem."""
    if one_call:
        return lambda: fn(start, goal)
    return lambda: torch.cat([fn(start[i : i + 1], goal[i : i + 1]) for i in range(start.shape[0])])


def best_of(repeats: int, clock: Callable[[], float], run: Callable[[], Tensor]) -> tuple[float, Tensor]:
    best, plan = float("inf"), torch.empty(0)
    for _ in range(repeats):
        t0 = clock()
        plan = run()
        best = min(best, clock() - t0)
    return best, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--elites", type=int, default=30)
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: CPU time on one thread")
    args = parser.parse_args()
    if args.clock == "cpu":
        torch.set_num_threads(1)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    import torchrl

    model = ResidualMLP(32, 10, hidden=256, depth=3, seed=0)
    h = args.horizon
    ours = make_planner("cem", horizon=h, iterations=args.iterations, samples=args.samples, elites=args.elites)
    theirs = CEMPlanner(GoalEnv(model), planning_horizon=h, optim_steps=args.iterations, num_candidates=args.samples, top_k=args.elites)

    def wmplan(s: Tensor, g: Tensor) -> Tensor:
        return ours.plan(model, s, g, seed=0).actions

    def peer(s: Tensor, g: Tensor) -> Tensor:
        return torchrl_plan(theirs, s, g, seed=0)

    load_before = os.getloadavg()
    unit = "ms/problem" if args.clock == "wall" else "CPU ms/problem"
    lines = [f"| planner | B | calls | {unit} | x wmplan batched | final cost (mean) |", "|---|---|---|---|---|---|"]
    for b in (int(x) for x in args.batches.split(",")):
        start, goal = reachable_problems(model, b, h, seed=0)
        wmplan(start[:1], goal[:1]), peer(start[:1], goal[:1])  # warm-up
        cells = []
        for name, fn in (("wmplan CEM", wmplan), ("torchrl CEMPlanner", peer)):
            for calls in (("one", "per problem") if b > 1 else ("one",)):
                t, plan = best_of(args.repeats, clock, planned(fn, start, goal, one_call=calls == "one"))
                with torch.no_grad():
                    cost = terminal_cost(rollout(model, start, plan.clamp(-1.0, 1.0))[:, -1], goal).mean().item()
                cells.append((name, calls, 1000 * t / b, cost))
        ref = cells[0][2]
        for name, calls, ms, cost in cells:
            lines.append(f"| {name} | {b} | {calls} | {ms:.1f} | {ms / ref:.2f} | {cost:.3e} |")
    print(f"`benchmarks/peer/.venv/bin/python benchmarks/peer/torchrl_cem.py {' '.join(sys.argv[1:])}`".replace(" `", "`"))
    print(f"model: residual MLP, D = 32, A = 10, 3 x 256 hidden; H = {h}; {args.samples} samples, {args.elites} elites, "
          f"{args.iterations} iterations; seed 0; best of {args.repeats}; torchrl {torchrl.__version__}\n")
    print("\n".join(lines))
    print(f"\nmachine: {machine()}; load average {' '.join(f'{x:.2f}' for x in load_before)} before, "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} after", flush=True)


if __name__ == "__main__":
    main()
