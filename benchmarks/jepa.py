"""JEPA world models: training time and latent geometry on a task's frames.

Trains a :class:`~wmplan.platform.models.JepaWorldModel` (or loads checkpoints given with
``--model``) and prints, per model, the training time and the Spearman rank correlation between
latent distance and true position distance over random pairs of valid states (rendered, encoded),
beside the same for raw pixels. A private yardstick for this benchmark: ``wmplan eval-model``
carries the official geometry metric.

    python benchmarks/jepa.py --data data/wall-pixels.parquet --out checkpoints/wall-jepa
    python benchmarks/jepa.py --task wall --model checkpoints/wall-pixels --model checkpoints/wall-jepa
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from wmplan.platform.envs import make_env
from wmplan.platform.models import jepa_train_config, load_world_model, render_states, save_checkpoint, train_jepa_model


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two 1-D samples (ties broken by order; continuous data has none)."""
    ra, rb = np.argsort(np.argsort(a)).astype(float), np.argsort(np.argsort(b)).astype(float)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra * ra).sum() * (rb * rb).sum()))


def geometry(model: object, task: str, *, pairs: int = 1000, seed: int = 0) -> dict[str, float]:
    """Rank correlation of latent (and raw-pixel) distance with the distance between the success
    coordinates of ``pairs`` random pairs of valid states of ``task``, and the mean latent distance
    in bins of true distance."""
    env = make_env(task)
    rng = np.random.default_rng(seed)
    a = np.stack([env.sample_start_goal(rng)[0] for _ in range(pairs)])
    b = np.stack([env.sample_start_goal(rng)[0] for _ in range(pairs)])
    size = model.frame_size  # type: ignore[attr-defined]
    fa, fb = render_states(env, a, size), render_states(env, b, size)
    with torch.no_grad():
        za, zb = model.encode(fa).cpu().numpy(), model.encode(fb).cpu().numpy()  # type: ignore[attr-defined]
    c = env.success_coords
    true = np.linalg.norm(a[:, c] - b[:, c], axis=-1)
    latent = np.linalg.norm(za - zb, axis=-1)
    pixels = np.linalg.norm(fa.reshape(pairs, -1).astype(float) - fb.reshape(pairs, -1).astype(float), axis=-1)
    edges = np.quantile(true, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    bins = np.clip(np.digitize(true, edges[1:-1]), 0, 4)
    return {
        "spearman_latent": spearman(latent, true),
        "spearman_pixels": spearman(pixels, true),
        "latent_by_quintile": [float(latent[bins == i].mean() / np.median(latent)) for i in range(5)],
        "true_quintile_edges": [float(e) for e in edges],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="wall")
    parser.add_argument("--data", default=None, help="train a JEPA model on this data set (with frames)")
    parser.add_argument("--out", default=None, help="where to save the trained model")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", action="append", default=[], help="a training option, KEY=VALUE (JSON value)")
    parser.add_argument("--model", action="append", default=[], help="a checkpoint to measure (repeatable)")
    parser.add_argument("--pairs", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    models: list[tuple[str, object]] = [(path, load_world_model(path)) for path in args.model]
    if args.data:
        from wmplan.platform.data import read_dataset

        options = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
        config = jepa_train_config(args.preset, **options)
        dataset = read_dataset(args.data)
        t0 = time.perf_counter()
        last = [0.0]

        def progress(stage: str, step: int, total: int, loss: float) -> None:
            if time.perf_counter() - last[0] > 30 or step == total:
                last[0] = time.perf_counter()
                print(f"  {stage} {step}/{total} loss {loss:.4f} ({last[0] - t0:.0f} s)", flush=True)

        model, metrics = train_jepa_model(dataset, config, progress=progress)
        print(json.dumps({k: v for k, v in metrics.items()}, indent=None))
        if args.out:
            save_checkpoint(model, args.out, metrics=metrics)
        models.append((args.out or "trained", model))
        args.task = dataset.env
    for name, model in models:
        print(name, json.dumps(geometry(model, args.task, pairs=args.pairs)))


if __name__ == "__main__":
    main()
