"""Turn pytest-benchmark JSONs into the MMD scaling plot (log-log time and memory against N).

    python benchmarks/plot_scaling.py benchmarks/results/cpu-2core-2026-11-30-mmd.json --out benchmarks/results/mmd-scaling-cpu.png

Several JSONs of one machine may be given (e.g. a run without KeOps and one of the KeOps rows):
a later file's (implementation, N) point replaces an earlier one's.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def load_mmd_points(paths: list[Path]) -> dict[str, list[tuple[int, float, float]]]:
    """``{implementation: [(N, median seconds, peak extra MiB), ...]}`` from the MMD group."""
    points: dict[str, dict[int, tuple[int, float, float]]] = defaultdict(dict)
    for path in paths:
        for bench in json.loads(path.read_text())["benchmarks"]:
            info = bench["extra_info"]
            if bench["group"].startswith("mmd fwd+bwd"):
                points[info["impl"]][info["n"]] = (info["n"], bench["stats"]["median"], float(info["peak_mib"]))
    return {impl: sorted(by_n.values()) for impl, by_n in points.items()}


def plot(points: dict[str, list[tuple[int, float, float]]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axes, memory_axes) = plt.subplots(1, 2, figsize=(11, 4.5))
    for impl, values in sorted(points.items()):
        n, seconds, mebibytes = zip(*values)
        style = "-o" if impl.startswith("alignkit") else "--s"
        time_axes.plot(n, seconds, style, label=impl)
        memory_axes.plot(n, [max(m, 1.0) for m in mebibytes], style, label=impl)
    for axes, label in ((time_axes, "median time, fwd + bwd (s)"), (memory_axes, "peak extra memory (MiB)")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("N = M (d = 64)")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3, which="both")
    time_axes.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out, dpi=120)


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="pytest-benchmark JSON(s) with the MMD group")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    title = args.title or f"Gaussian MMD^2 scaling ({', '.join(path.stem for path in args.results)})"
    plot(load_mmd_points(args.results), args.out, title)
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
