"""Peak resident memory of one Gaussian MMD^2 forward + backward at large N, as a process.

pytest-benchmark reports the extra memory of the call; the README's "100k completes in under
4 GB" target is about the whole process. Run it under ``/usr/bin/time -v`` and read "Maximum
resident set size" (KiB)::

    OMP_NUM_THREADS=2 /usr/bin/time -v python benchmarks/mmd_peak_rss.py --n 100000 --backend auto

The inputs are those of ``test_bench_mmd.py`` (N = M, d = 64, sigma 8, seeded by N).
"""

from __future__ import annotations

import argparse
import time

import torch

from alignkit.functional import gaussian_mmd

D = 64
SIGMA = 8.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="samples per side (N = M)")
    parser.add_argument("--backend", default="auto", choices=["auto", "blocked", "dense", "keops"])
    args = parser.parse_args()
    g = torch.Generator().manual_seed(args.n)
    x = torch.randn(args.n, D, generator=g).requires_grad_(True)
    y = (torch.randn(args.n, D, generator=g) + 0.1).requires_grad_(True)
    started = time.perf_counter()
    value = gaussian_mmd(x, y, SIGMA, backend=args.backend)
    grads = torch.autograd.grad(value, [x, y])
    seconds = time.perf_counter() - started
    finite = all(bool(torch.isfinite(g).all()) for g in grads)
    print(f"N = M = {args.n}, d = {D}, backend {args.backend}: MMD^2 {float(value.detach()):.6g}, fwd+bwd {seconds:.1f} s, gradients finite: {finite}, threads {torch.get_num_threads()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
