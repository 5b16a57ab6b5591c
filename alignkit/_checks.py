"""Input validation and dtype handling for every public function, in one place.

Every public loss calls these helpers so that the same mistake gives the same message
everywhere: a ``ValueError`` naming the argument, what was expected and what was received.

Checking for NaN/Inf needs one device-to-host synchronisation per tensor. Inside a tight
training loop on GPU this is measurable; :func:`input_checks` turns the value checks off
(shapes, devices and dtypes are still checked because they cost nothing).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

_CHECK_VALUES = True

_F = TypeVar("_F", bound=Callable[..., Any])

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@contextlib.contextmanager
def input_checks(enabled: bool) -> Iterator[None]:
    """Context manager turning the NaN/Inf checks of inputs on or off (default: on)."""
    global _CHECK_VALUES
    previous, _CHECK_VALUES = _CHECK_VALUES, enabled
    try:
        yield
    finally:
        _CHECK_VALUES = previous


def values_checked() -> bool:
    """Whether value checks (NaN/Inf, signs, sums), which cost a host sync, are on."""
    return _CHECK_VALUES


def check_tensor(
    x: Any,
    name: str,
    *,
    ndim: int | tuple[int, ...] | None = None,
    min_rows: int = 1,
    check_values: bool = True,
) -> Tensor:
    """Check that ``x`` is a non-empty floating tensor of the right rank with finite values.

    ``min_rows`` is the smallest allowed size of dimension ``-2`` (the sample axis of an
    ``(N, d)`` array) when ``ndim`` is given, else of dimension 0.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, received {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}: expected a floating dtype {FLOAT_DTYPES}, received {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if x.ndim not in allowed:
            shape_word = " or ".join(f"{n}-D" for n in allowed)
            raise ValueError(f"{name}: expected a {shape_word} tensor, received shape {tuple(x.shape)}")
    if x.ndim == 0:
        raise ValueError(f"{name}: expected at least a 1-D tensor, received a 0-dim tensor")
    if x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, received shape {tuple(x.shape)}")
    rows_axis = -2 if (ndim is not None and x.ndim >= 2) else 0
    if x.shape[rows_axis] < min_rows:
        raise ValueError(
            f"{name}: expected at least {min_rows} samples along dim {rows_axis}, "
            f"received shape {tuple(x.shape)}"
        )
    # Meta tensors have no values; their device mismatch is reported by check_same_kind.
    if check_values and _CHECK_VALUES and x.device.type != "meta" and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: expected finite values, received NaN or Inf")
    return x


def check_same_kind(tensors: dict[str, Tensor], *, dtype: bool = True) -> None:
    """Check that all named tensors share one device and (unless ``dtype=False``) one dtype."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name}: expected device {first.device} (the device of {first_name}), received {t.device}"
            )
        if dtype and t.dtype != first.dtype:
            raise ValueError(
                f"{name}: expected dtype {first.dtype} (the dtype of {first_name}), received {t.dtype}"
            )


def check_feature_widths(tensors: dict[str, Tensor]) -> None:
    """Check that all named tensors have the same last dimension (feature width)."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.shape[-1] != first.shape[-1]:
            raise ValueError(
                f"{name}: expected feature width {first.shape[-1]} (the width of {first_name}), "
                f"received shape {tuple(t.shape)}"
            )


def check_sequence(xs: Any, name: str, *, min_len: int = 1) -> list[Tensor]:
    """Turn a tensor or a sequence of tensors into a list, checking its length."""
    if isinstance(xs, Tensor):
        xs = [xs]
    if not isinstance(xs, Sequence) or isinstance(xs, str):
        raise ValueError(f"{name}: expected a sequence of tensors, received {type(xs).__name__}")
    xs = list(xs)
    if len(xs) < min_len:
        raise ValueError(f"{name}: expected at least {min_len} tensors, received {len(xs)}")
    return xs


def check_positive(value: float, name: str) -> float:
    """Check that a scalar option is a finite, strictly positive number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a positive number, received {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a finite value > 0, received {value!r}")
    return float(value)


def check_non_negative(value: float, name: str) -> float:
    """Check that a scalar option is a finite number ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, received {value!r}")
    return float(value)


def check_count(value: int, name: str, minimum: int = 1) -> int:
    """Check that an option is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, received {value!r}")
    return value


def check_representable(results: Sequence[Tensor], name: str, dtype: torch.dtype) -> None:
    """Finite inputs can still overflow the compute dtype (``|x| ~ 1e30`` squared in float32):
    refuse such a result instead of returning Inf/NaN. A value check (one host sync); skipped
    under ``input_checks(False)``."""
    if not _CHECK_VALUES or any(r.device.type == "meta" for r in results):
        return
    if not bool(torch.stack([torch.isfinite(r).all() for r in results]).all()):  # one host sync
        raise ValueError(
            f"{name}: its values overflow {str(dtype).removeprefix('torch.')} in this computation "
            "(squares above its range); rescale it or pass float64"
        )


def check_non_negative_entries(tensor: Tensor, name: str, *, positive_sum: bool = False) -> Tensor:
    """Every entry ``>= 0`` (a transport plan, weights) and, with ``positive_sum``, some entry
    ``> 0`` along the last axis. A value check: skipped under ``input_checks(False)``."""
    if not _CHECK_VALUES or tensor.device.type == "meta":
        return tensor
    if bool((tensor < 0).any()):
        raise ValueError(f"{name}: expected entries >= 0, received a negative one ({float(tensor.min()):.3g})")
    if positive_sum and bool((tensor.sum(-1) <= 0).any()):
        raise ValueError(f"{name}: expected weights with a positive sum, received all zeros")
    return tensor


def check_covariances(covariances: Tensor, name: str, *, diagonal: bool, strict: bool = False) -> Tensor:
    """Variances (``diagonal``) must be ``>= 0``; covariance matrices ``(..., d, d)`` symmetric
    positive semi-definite, both up to the round-off of their dtype; with ``strict``, variances
    ``> 0`` and matrices positive definite (a Gaussian density needs them). A value check: skipped
    under ``input_checks(False)``; the matrix check costs one ``eigvalsh``."""
    if not _CHECK_VALUES or covariances.device.type == "meta":
        return covariances
    c = covariances.detach().to(torch.float64)
    if diagonal:
        if bool((c < 0).any()) or (strict and bool((c == 0).any())):
            bound = "> 0" if strict else ">= 0"
            raise ValueError(f"{name}: expected variances {bound}, received {float(c.min()):.3g}")
        return covariances
    tolerance = 100 * torch.finfo(covariances.dtype).eps * max(float(c.abs().max()), 1.0)
    asymmetry = float((c - c.mT).abs().max())
    if asymmetry > tolerance:
        raise ValueError(f"{name}: expected symmetric covariance matrices, received an asymmetric one (max |S - S^T| = {asymmetry:.3g})")
    smallest = float(torch.linalg.eigvalsh(c).min())
    if smallest < -tolerance or (strict and smallest <= 0):
        kind = "definite" if strict else "semi-definite"
        raise ValueError(f"{name}: expected positive {kind} covariance matrices, received an eigenvalue of {smallest:.3g}")
    return covariances


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """Check that an option is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, received {value!r}")
    return value


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Internal and result dtype: float64 stays float64, everything else computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def full_precision(fn: _F) -> _F:
    """Run ``fn`` with autocast disabled so that its internals stay in float32 or float64.

    The wrapped function casts its own inputs with :func:`compute_dtype`; disabling autocast
    prevents matrix products inside it from silently dropping back to half precision.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as stack:
            for device_type in ("cpu", "cuda"):
                if torch.is_autocast_enabled(device_type):
                    stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]

