"""Graph breaks of each functional loss under torch.compile, with and without the input checks.

    python benchmarks/compile_report.py            # a markdown table on stdout

``torch._dynamo.explain`` traces each case of ``tests/core/compile_cases.py`` (no code is
generated) and lists how many graphs it became and why it broke. Value checks (NaN/Inf, PSD) read
tensors back to the host and break the graph; ``alignkit.input_checks(False)`` turns them off.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "core"))

from compile_cases import CASES, inputs

import alignkit


def _reasons(explanation) -> str:
    reasons = []
    for item in explanation.break_reasons:
        text = str(item.reason).splitlines()[0].strip()
        frame = item.user_stack[-1] if item.user_stack else None
        where = f" ({Path(frame.filename).name}:{frame.lineno})" if frame is not None else ""
        reasons.append(f"{text[:90]}{where}")
    return "; ".join(dict.fromkeys(reasons)) or "—"


def main() -> None:
    print(f"torch {torch.__version__}\n")
    print("| function | graphs / breaks, checks on | graphs / breaks, `input_checks(False)` | why it breaks (checks off) |")
    print("|---|---|---|---|")
    for name, function in CASES.items():
        torch._dynamo.reset()
        on = torch._dynamo.explain(function)(inputs())
        torch._dynamo.reset()
        with alignkit.input_checks(False):
            off = torch._dynamo.explain(function)(inputs())
        print(f"| `{name}` | {on.graph_count} / {on.graph_break_count} | {off.graph_count} / {off.graph_break_count} | {_reasons(off)} |")


if __name__ == "__main__":
    main()
