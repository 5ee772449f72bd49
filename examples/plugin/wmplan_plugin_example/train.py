"""Train the example world model: ``python -m wmplan_plugin_example.train --out DIR [--steps N]``.

1. Data: trajectories of the task (:class:`~wmplan_plugin_example.task.LowDoorWall`) with a
   16 x 16 frame at every env step, generated with wmplan's own data generation
   (:func:`wmplan.platform.data.generate_dataset`, which takes the task by its spec and uses the
   task's data policy: the Wall's random walk), or read from ``--data`` when that file exists.
2. Training, CPU, one torch thread by default: windows of ``--rollout`` model steps (5 env steps
   each); the encoder sees every frame of a window, the predictor rolls the first frame's tokens
   forward open loop. The loss is

   - the MSE between predicted and encoded tokens, mean over the rollout (the encoder learns too,
     unlike DINO-WM's frozen DINOv2; its tokens are normalised, so they cannot shrink), and
   - ``--probe-weight`` times the probe's position error (normalised units) on encoded and on
     predicted tokens, which keeps the tokens from collapsing and anchors them to what matters on
     this task (DINO-WM's proprioception term).

3. Validation on the held-out split (before and after), then :func:`wmplan_plugin_example.model.save`.

The defaults (1000 trajectories of 100 env steps, 3000 steps of 64 windows of 3 model steps) took
6 min 12 s for the data (two processes) and 1 min 54 s for the training (one thread) on the
project's busy 2-core machine; the tests use seconds' worth (``--trajectories 24 --trajectory-steps
50 --steps 40``), which trains a model that is poor but real.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wmplan.platform.data import DataConfig, Trajectory, generate_dataset, read_dataset
from wmplan.platform.envs import pack_actions
from wmplan_plugin_example import TASK
from wmplan_plugin_example.model import PatchModelConfig, PatchWorldModel, save

__all__ = ["Windows", "windows", "train", "main"]


class Windows:
    """The training windows of a split, sampled by index without copying frames.

    Args:
        trajectories: trajectories of equal length with frames ``[T+1, S, S, 3]``.
        frameskip: env steps per model step.
        rollout: ``k``, model steps per window.
    """

    def __init__(self, trajectories: Sequence[Trajectory], *, frameskip: int, rollout: int) -> None:
        frames = [t.frames for t in trajectories if t.frames is not None]
        if not trajectories or len(frames) != len(trajectories):
            raise ValueError("training needs trajectories with frames (generate the data with frames=True)")
        self.frames = np.stack(frames)  # [N, T+1, S, S, 3] uint8
        self.states = np.stack([t.states for t in trajectories]).astype(np.float32)  # [N, T+1, D_env]
        self.actions = np.stack([t.actions for t in trajectories]).astype(np.float32)  # [N, T, 2]
        self.frameskip, self.rollout = frameskip, rollout
        self.span = frameskip * rollout
        self.starts = self.actions.shape[1] - self.span + 1
        if self.starts < 1:
            raise ValueError(f"trajectories of {self.actions.shape[1]} env steps are shorter than a window of {self.span}")

    def __len__(self) -> int:
        return len(self.frames) * self.starts

    def get(self, index: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """Windows ``index`` (``[B]`` ints below ``len(self)``): frames ``[B, k+1, S, S, 3]`` uint8,
        states ``[B, k+1, D_env]`` and packed model actions ``[B, k, frameskip * 2]``."""
        traj, t = np.divmod(index, self.starts)
        steps = t[:, None] + self.frameskip * np.arange(self.rollout + 1)[None]  # [B, k+1]
        env_steps = t[:, None] + np.arange(self.span)[None]  # [B, k * frameskip]
        frames = self.frames[traj[:, None], steps]
        states = self.states[traj[:, None], steps]
        actions = pack_actions(self.actions[traj[:, None], env_steps], self.frameskip)
        return torch.from_numpy(frames), torch.from_numpy(states), torch.from_numpy(actions)


def windows(trajectories: Sequence[Trajectory], *, frameskip: int, rollout: int) -> Windows:
    """The :class:`Windows` of ``trajectories``."""
    return Windows(trajectories, frameskip=frameskip, rollout=rollout)


def _losses(model: PatchWorldModel, frames: Tensor, states: Tensor, actions: Tensor, *, probe_weight: float) -> dict[str, Tensor]:
    """The weighted training losses of a batch of windows (see the module docstring), each a scalar."""
    z = model.encode_frames(model.frames_to_tensor(frames))  # [B, k+1, D]
    target = (states - model.state_mean) / model.state_std  # [B, k+1, D_env]
    k = actions.shape[1]
    predicted, tokens, probe = z[:, 0], z.new_zeros(()), z.new_zeros(())
    for j in range(k):
        predicted = model.step(predicted, actions[:, j])
        tokens = tokens + (predicted - z[:, j + 1]).pow(2).mean() / k
        probe = probe + (model.probe(predicted) - target[:, j + 1]).pow(2).mean() / k
    encoded_probe = (model.probe(z) - target).pow(2).mean()
    return {"tokens": tokens, "probe": probe_weight * (probe + encoded_probe)}


@torch.no_grad()
def evaluate(model: PatchWorldModel, data: Windows, *, count: int = 512, seed: int = 1) -> dict[str, float]:
    """Validation numbers on ``count`` windows: ``token_mse`` (one-step predicted against encoded
    tokens, relative to the tokens' variance), ``probe_px`` (the probe's position error on encoded
    frames, pixels) and ``rollout_px`` (on the last predicted step, pixels)."""
    model.eval()
    index = np.random.default_rng(seed).choice(len(data), size=min(count, len(data)), replace=False)
    frames, states, actions = data.get(index)
    z = model.encode_frames(model.frames_to_tensor(frames))
    one = model.step(z[:, 0], actions[:, 0])
    predicted = z[:, 0]
    for j in range(actions.shape[1]):
        predicted = model.step(predicted, actions[:, j])
    variance = z[:, 1].var(dim=0).mean().clamp_min(1e-12)
    return {
        "token_mse": float((one - z[:, 1]).pow(2).mean() / variance),
        "probe_px": float((model.decode(z[:, 0]) - states[:, 0]).norm(dim=-1).mean()),
        "rollout_px": float((model.decode(predicted) - states[:, -1]).norm(dim=-1).mean()),
    }


def train(
    train_data: Windows,
    val_data: Windows,
    *,
    config: PatchModelConfig,
    steps: int,
    batch: int = 64,
    lr: float = 2e-3,
    probe_weight: float = 1.0,
    seed: int = 0,
    say: Any = print,
) -> tuple[PatchWorldModel, dict[str, Any]]:
    """Train a :class:`PatchWorldModel` for ``steps`` AdamW steps on ``batch`` windows each (cosine
    learning rate from ``lr``; the probe's loss weighted by ``probe_weight``); returns the model (eval
    mode) and its metrics."""
    model = PatchWorldModel(config, seed=seed)
    states = train_data.states.reshape(-1, train_data.states.shape[-1])
    actions = train_data.actions.reshape(-1, train_data.actions.shape[-1])
    model.set_normalization(
        state_mean=torch.from_numpy(states.mean(0)), state_std=torch.from_numpy(np.maximum(states.std(0), 1e-6)),
        action_mean=torch.from_numpy(np.tile(actions.mean(0), config.frameskip)),
        action_std=torch.from_numpy(np.tile(np.maximum(actions.std(0), 1e-6), config.frameskip)),
    )
    before = evaluate(model, val_data)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / max(1, steps))))
    rng = np.random.default_rng(seed)
    t0, shown = time.monotonic(), time.monotonic()
    for i in range(steps):
        model.train()
        losses = _losses(model, *train_data.get(rng.integers(len(train_data), size=batch)), probe_weight=probe_weight)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if time.monotonic() - shown > 10 or i == steps - 1:
            shown = time.monotonic()
            say(f"step {i + 1}/{steps}: " + ", ".join(f"{k} {float(v):.4f}" for k, v in losses.items()))
    seconds = time.monotonic() - t0
    after = evaluate(model, val_data)
    metrics = {"steps": steps, "batch": batch, "lr": lr, "probe_weight": probe_weight, "seed": seed, "train_seconds": round(seconds, 2),
               "parameters": sum(p.numel() for p in model.parameters()),
               **{f"val_{k}_before": v for k, v in before.items()}, **{f"val_{k}_after": v for k, v in after.items()}}
    return model.eval(), metrics


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (``python -m wmplan_plugin_example.train --help``)."""
    p = argparse.ArgumentParser(prog="python -m wmplan_plugin_example.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--steps", type=int, default=3000, help="training steps (default: %(default)s)")
    p.add_argument("--trajectories", type=int, default=1000, help="trajectories to generate (default: %(default)s)")
    p.add_argument("--data", default="", help="data set with frames (default: OUT-data.parquet beside the checkpoint, "
                   "generated when missing)")
    p.add_argument("--rollout", type=int, default=3, help="model steps per training window (default: %(default)s)")
    p.add_argument("--batch", type=int, default=64, help="windows per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--probe-weight", type=float, default=1.0, help="weight of the probe's loss (default: %(default)s)")
    p.add_argument("--trajectory-steps", type=int, default=0,
                   help="env steps per generated trajectory (default: the task's, 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the weights (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.trajectories < 2 or args.rollout < 1 or args.batch < 2:
        p.error("need --steps >= 1, --trajectories >= 2, --rollout >= 1 and --batch >= 2")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    config = PatchModelConfig()
    data_path = Path(args.data) if args.data else out.with_name(out.name + "-data.parquet")  # not in the checkpoint
    if not data_path.exists():
        t0 = time.monotonic()
        generate_dataset(DataConfig(env=TASK, episodes=args.trajectories, steps=args.trajectory_steps, frames=True,
                                    frame_size=config.frame_size, seed=args.seed), data_path)
        print(f"data: {args.trajectories} trajectories of {TASK} with {config.frame_size} px frames in "
              f"{time.monotonic() - t0:.1f} s -> {data_path}", flush=True)
    dataset = read_dataset(data_path)
    train_split, val_split = dataset.split("train"), dataset.split("val") or dataset.split("train")
    model, metrics = train(windows(train_split, frameskip=dataset.frameskip, rollout=args.rollout),
                           windows(val_split, frameskip=dataset.frameskip, rollout=args.rollout),
                           config=config, steps=args.steps, batch=args.batch, lr=args.lr, probe_weight=args.probe_weight,
                           seed=args.seed,
                           say=lambda m: print(m, file=sys.stderr, flush=True))
    save(model, out, metrics={**metrics, "data": str(data_path), "trajectories": len(dataset.trajectories)})
    print(f"trained {args.steps} steps in {metrics['train_seconds']:.1f} s ({metrics['parameters']} parameters); "
          f"validation: token MSE {metrics['val_token_mse_before']:.3f} -> {metrics['val_token_mse_after']:.3f} of the "
          f"token variance, probe {metrics['val_probe_px_before']:.1f} -> {metrics['val_probe_px_after']:.1f} px, "
          f"{args.rollout}-step rollout {metrics['val_rollout_px_before']:.1f} -> {metrics['val_rollout_px_after']:.1f} px",
          flush=True)
    print(f"checkpoint: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
