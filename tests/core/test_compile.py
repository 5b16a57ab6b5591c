"""The functional losses give the same values and gradients under torch.compile (inductor) as
eagerly, in float64 so that any difference beyond round-off shows. Graph breaks (the input checks' host reads, data-dependent loops) are allowed; the
report of them is ``python benchmarks/compile_report.py``."""

from __future__ import annotations

import shutil

import pytest
import torch

from compile_cases import CASES, inputs

# Deliberate, as for KeOps: inductor compiles C++ kernels on the CPU, so without a compiler there
# is nothing to test. This machine and CI have g++, so here these tests always run.
pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="torch.compile's inductor needs a C++ compiler on the CPU"
)


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_equals_eager(name: str) -> None:
    torch._dynamo.reset()
    function = CASES[name]
    eager_inputs, compiled_inputs = inputs(), inputs()
    eager = function(eager_inputs)
    compiled = torch.compile(function, dynamic=False)(compiled_inputs)
    torch.testing.assert_close(compiled, eager, rtol=1e-9, atol=1e-12)
    eager_grads = torch.autograd.grad(eager, eager_inputs, allow_unused=True)
    compiled_grads = torch.autograd.grad(compiled, compiled_inputs, allow_unused=True)
    for g_eager, g_compiled in zip(eager_grads, compiled_grads):
        if g_eager is None:
            assert g_compiled is None
        else:
            torch.testing.assert_close(g_compiled, g_eager, rtol=1e-9, atol=1e-12)
