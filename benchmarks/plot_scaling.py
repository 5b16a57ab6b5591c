"""Turn a pytest-benchmark JSON into the MMD scaling plot (log-log time and memory against N).

    python benchmarks/plot_scaling.py benchmarks/results/cpu-2core-2026-11-27.json benchmarks/results/mmd-scaling-cpu.png
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def peak_mib(info: dict) -> float:
    """Peak extra memory in MiB: ``peak_mib``, or ``peak_extra_bytes`` of the results stored before it."""
    return float(info["peak_mib"]) if "peak_mib" in info else info["peak_extra_bytes"] / 2**20


def load_mmd_points(path: Path) -> dict[str, list[tuple[int, float, float]]]:
    """``{implementation: [(N, median seconds, peak extra MiB), ...]}`` from the MMD group."""
    points: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for bench in json.loads(path.read_text())["benchmarks"]:
        info = bench["extra_info"]
        if not bench["group"].startswith("mmd fwd+bwd"):
            continue
        points[info["impl"]].append((info["n"], bench["stats"]["median"], peak_mib(info)))
    return {impl: sorted(values) for impl, values in points.items()}


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
    if len(argv) not in (2, 3):
        print(__doc__)
        return 2
    source, out = Path(argv[0]), Path(argv[1])
    title = argv[2] if len(argv) == 3 else f"Gaussian MMD^2 scaling ({source.stem})"
    plot(load_mmd_points(source), out, title)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
