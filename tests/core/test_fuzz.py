"""Fuzz every tensor argument of every public function (the slots of ``test_bad_inputs``) with
hypothesis: a corruption (NaN/Inf, empty, wrong rank, tiny or huge magnitudes, one sample,
integer/complex/half dtypes, another width), applied to one argument, possibly in float32. The
call must give a finite result or a ``ValueError``/``TypeError`` whose message starts with an
argument name; never another exception, a hang, or a silent NaN/Inf.

CI runs the derandomised ``ci`` profile; ``pytest tests/core/test_fuzz.py
--hypothesis-profile=deep`` tries ten times as many examples (``--hypothesis-show-statistics``
reports the count).
"""

from __future__ import annotations

import dataclasses
import math
import re
import signal

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import alignkit.functional
from test_bad_inputs import SLOTS, Slot

NAMED = re.compile(r"^[A-Za-z_][\w]*(\[[\w ,]+\])?( and [\w\[\], ]+)?: ")


def _scale(factor: float):
    return lambda t: t * factor if t.is_floating_point() else t


def _width(t: Tensor) -> Tensor:
    return torch.cat([t, t[..., :1]], dim=-1) if t.ndim >= 1 and t.shape[-1] > 0 else t


def _with(value: float):
    def corrupt(t: Tensor) -> Tensor:
        if t.numel() == 0 or not (t.is_floating_point() or t.is_complex()):
            return t
        out = t.clone()
        out.view(-1)[0] = value
        return out

    return corrupt


CORRUPTIONS = {
    "nan": _with(math.nan),
    "inf": _with(-math.inf),
    "empty": lambda t: t[:0],
    "extra dimension": lambda t: t.unsqueeze(0).expand(2, *t.shape),
    "missing dimension": lambda t: t.reshape(-1) if t.ndim >= 2 else t.sum(),
    "scalar": lambda t: t.sum(),
    "times 1e-30": _scale(1e-30),
    "times 1e30": _scale(1e30),
    "one sample": lambda t: t[:1],
    "all equal": lambda t: torch.ones_like(t) * 0.5,
    "zeros": torch.zeros_like,
    "negative": lambda t: -t.abs() - 0.1,
    "integer": lambda t: (t.real if t.is_complex() else t).round().to(torch.int64),
    "complex": lambda t: t.to(torch.complex128),
    "float16": lambda t: t.to(torch.float16),
    "bfloat16": lambda t: t.to(torch.bfloat16),
    "other width": _width,
}


class _Timeout(Exception):
    pass


def _tensors(result: object):
    if isinstance(result, Tensor):
        yield result
    elif isinstance(result, (tuple, list)):
        for item in result:
            yield from _tensors(item)
    elif dataclasses.is_dataclass(result):
        for field in dataclasses.fields(result):
            yield from _tensors(getattr(result, field.name))


def _call_with_timeout(slot: Slot, corrupt, seconds: int = 60) -> object:
    def alarm(signum, frame):
        raise _Timeout(f"{slot.id} did not return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        return slot(corrupt)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# Each example takes milliseconds: 40x the profile's count (ci: 1,000; deep: 10,000).
@settings(max_examples=40 * settings.default.max_examples)
@given(
    slot=st.sampled_from(SLOTS),
    first=st.sampled_from(sorted(CORRUPTIONS)),
    second=st.sampled_from([None, *sorted(CORRUPTIONS)]),
    float32=st.booleans(),
)
def test_a_corrupted_argument_gives_a_finite_result_or_a_named_error(slot: Slot, first: str, second: str | None, float32: bool) -> None:
    def corrupt(t: Tensor) -> Tensor:
        t = t.to(torch.float32) if float32 else t
        t = CORRUPTIONS[first](t)
        return CORRUPTIONS[second](t) if second is not None and t.ndim > 0 else t

    try:
        result = _call_with_timeout(slot, corrupt)
    except (ValueError, TypeError) as error:
        assert NAMED.match(str(error)), f"{slot.id} with {first}, {second}: the error does not name an argument: {error}"
        return
    for tensor in _tensors(result):
        if tensor.is_floating_point() or tensor.is_complex():
            assert bool(torch.isfinite(tensor).all()), f"{slot.id} with {first}, {second} (float32={float32}): a non-finite result"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda x: alignkit.functional.feature_moments(x), id="feature_moments"),
        pytest.param(lambda x: alignkit.functional.fit_gmm(x, 2, n_iter=2), id="fit_gmm"),
    ],
)
def test_finite_inputs_that_overflow_the_compute_dtype_are_refused(call, dtype: torch.dtype) -> None:
    # Found by the fuzz above: |x| ~ 1e30 is finite in float32, its square is not.
    x = (torch.randn(12, 3) * 1e30).to(dtype)
    with pytest.raises(ValueError, match=r"^x: its values overflow float32"):
        call(x)
