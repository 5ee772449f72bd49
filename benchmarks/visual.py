"""Visual world models: training throughput and planning time per iteration against latent size.

For the built-in encoder at 64x64 frames and latent grids of 8x8 cells with 2, 4, 8 and 16
channels (D = 128 .. 1024 numbers), prints a Markdown table: autoencoder training and encoding
throughput (frames per second), predictor training throughput (model transitions per second),
and the time per iteration of GRASP, GD and CEM on a batch of problems in that latent space
(planning never touches pictures: starts and goals are encoded once, before the loop).

    python benchmarks/visual.py                   # CPU (or the GPU when there is one)
    python benchmarks/visual.py --device cuda --channels 4,8,16,32 --batch 64
"""

from __future__ import annotations

import argparse
import functools
import platform
import time

import numpy as np
import torch

from planners import matmul_rate, sync, time_per_iteration
from wmplan.platform.demo import resolve_device
from wmplan.platform.envs import make_env
from wmplan.platform.models import VisualModelConfig, VisualTrainConfig, VisualWorldModel, render_states
from wmplan.platform.models.training import TrainConfig, fit_rollouts
from wmplan.platform.models.visual_training import train_autoencoder

BUDGET = {"grasp": 100, "gd": 20, "cem": 3}


def frames(n: int, size: int) -> np.ndarray:
    """``n`` wall-task pictures of random positions."""
    env = make_env("wall")
    rng = np.random.default_rng(0)
    states = [env.sample_start_goal(rng)[0] for _ in range(n)]
    return render_states(env, np.stack(states), size)


def timed(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--channels", default="2,4,8,16", help="latent channels of the 8x8 grid")
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16, help="planning problems per batch")
    parser.add_argument("--steps", type=int, default=20, help="training steps timed per stage")
    args = parser.parse_args()
    device = resolve_device(args.device)
    pictures = frames(512, 64)
    cpu = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(f"device: {device} ({where}); torch {torch.__version__}; matmul peak {matmul_rate(device) / 1e9:.1f} GFLOP/s")
    print(f"64x64 frames, built-in encoder (32 channels), predictor 3x256; planning batch {args.batch}, H={args.horizon}\n")
    names = list(BUDGET)
    print("| latent (C x 8 x 8) | D | encoder training (frames/s) | encoding (frames/s) | predictor training (transitions/s) | "
          + " | ".join(f"{n} ms/it" for n in names) + " |")
    print("|" + "---|" * (5 + len(names)))
    for c in (int(x) for x in args.channels.split(",")):
        config = VisualModelConfig(env="wall", state_dim=2, action_dim=10, latent_channels=c)
        model = VisualWorldModel(config, seed=0).to(device)
        train = VisualTrainConfig(encoder_steps=args.steps, steps=args.steps, device=str(device))
        ae = train_autoencoder(model, pictures, train, None)
        model.encoder.requires_grad_(False)
        model.decoder.requires_grad_(False)  # type: ignore[union-attr]
        encode_s = timed(functools.partial(model.encode, pictures), device)
        d = config.latent_dim
        z = torch.randn(4096, 4, d, device=device)
        a = torch.rand(4096, 3, 10, device=device) * 2 - 1
        fit = fit_rollouts(model, z, a, TrainConfig(steps=args.steps, device=str(device)))
        model.requires_grad_(False)
        with torch.no_grad():  # a predictor that moves, as a trained one does
            model.predictor[-1].weight.normal_(0, 0.01)
        start = model.encode(pictures[: args.batch])
        goal = model.encode(pictures[args.batch : 2 * args.batch])
        per_it = {n: time_per_iteration(n, model, start, goal, args.horizon, iterations=BUDGET[n]) for n in names}
        cells = " | ".join(f"{1000 * per_it[n]:.1f}" for n in names)
        print(f"| {c} x 8 x 8 | {d} | {ae['encoder_frames_per_s']:.0f} | {len(pictures) / encode_s:.0f} | "
              f"{fit['transitions_per_s']:.0f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
