"""Unstructured sparse fp32 weights: our compressed-rows kernel against our dense fp32 GEMM,
on the layer shapes of the example models (digits CNN convolutions as im2col GEMMs, MiniLM-
sized linears) at 75 / 90 / 95 % zeros, one thread. Prints both times and dense/sparse (> 1:
sparse is faster), then the lowest sparsity at which sparse won every shape. The native
engine's EngineConfig.sparse_f32_min_zero_fraction follows from it.

    python -m benchmarks.kernels_sparse_f32          # ~20 s
"""

from __future__ import annotations

import argparse

import numpy as np

import kernels
from benchmarks.kernels_gemm import best_time, cpu_model
from kernels import quant

SHAPES = [  # (M, N, K)
    (64, 64, 288),     # digits conv2: 8x8 pixels, 3x3 x 32 channels in
    (16, 128, 576),    # digits conv3: 4x4 pixels, 3x3 x 64 in
    (1, 128, 512),     # digits fc1, batch 1
    (4, 128, 512),     # the same, batch 4 (the GEMM path starts at 4 rows)
    (32, 384, 384),    # MiniLM-sized linear, 32 tokens
    (32, 1536, 384),   # MiniLM feed-forward in
]
SPARSITIES = (0.75, 0.9, 0.95)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=0.3, help="seconds of timing per kernel and shape")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    kernels.set_num_threads(1)
    print(f"CPU: {cpu_model()}, kernels ISA {kernels.cpu_features()['isa']}, 1 thread; times in microseconds")
    print(f"{'M':>4} {'N':>5} {'K':>5} | {'dense':>8} | " + " | ".join(f"{f'rows {s:.0%}':>9} {'x':>5}" for s in SPARSITIES))
    wins = {s: True for s in SPARSITIES}
    for m, n, k in SHAPES:
        w = rng.standard_normal((n, k)).astype(np.float32)
        x = rng.standard_normal((m, k)).astype(np.float32)
        dense = kernels.pack_f32(w)
        t_dense = best_time(lambda: kernels.f32_linear(x, dense), args.budget)
        cells = []
        for s in SPARSITIES:
            packed = kernels.pack_sparse(quant.prune_unstructured(w, s))
            t = best_time(lambda: kernels.sparse_linear(x, packed), args.budget)
            wins[s] &= t < t_dense
            cells.append(f"{1e6 * t:9.1f} {t_dense / t:5.2f}")
        print(f"{m:4d} {n:5d} {k:5d} | {1e6 * t_dense:8.1f} | " + " | ".join(cells), flush=True)
    kernels.set_num_threads(0)
    won = [s for s in SPARSITIES if wins[s]]
    print(f"\nsparse faster than dense at every shape from {min(won):.0%} zeros" if won else
          "\nsparse was not faster than dense at every shape at any sparsity measured")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
