"""The fused CPU attention kernel (``attention_kernel.c``): built on first use, loaded with ctypes.

The unfused core (:class:`~alignkit_models.layers.attention._CpuAttention`) makes several passes
over ``(B * H, T_t, T_s)`` matrices that do not stay in cache; this kernel computes each
``(T_t, T_s)`` block's scores, softmax, dropout and products while the block is in cache, and
its backward recomputes the weights from each row's log-sum-exp instead of reading them back.
It is compiled once per machine with the system C compiler (``$CC`` or ``cc``, with OpenMP and
``-march=native``) into ``$ALIGNKIT_CACHE_DIR`` (default ``~/.cache/alignkit``), under a name
that hashes the source, the flags and the CPU's feature flags. Without a compiler, or with
``ALIGNKIT_CPU_ATTENTION=unfused``, :func:`fused_attention_unavailable` says why and
``attention`` uses the unfused core, which computes the same values.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("attention_kernel.c")
# -ffast-math lets the compiler vectorize exp (glibc's libmvec) and the row sums; it is given to
# the compile step only: linked with it, the library would switch the whole process to
# flush-to-zero. Masked scores are therefore a finite large negative number (MASKED), never -inf.
COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-std=c11"]
LINK_FLAGS = ["-shared", "-fopenmp", "-lm"]
MASKED = -1e30


def _cache_dir() -> Path:
    if "ALIGNKIT_CACHE_DIR" in os.environ:
        return Path(os.environ["ALIGNKIT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "alignkit"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(compiler: str, target: Path) -> None:
    """Compile and link into ``target`` atomically (concurrent processes may build at once)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = Path(tmp) / "kernel.o", Path(tmp) / "kernel.so"
        link = [*LINK_FLAGS, "-lmvec"] if platform.machine() == "x86_64" else LINK_FLAGS
        for command in ([compiler, *COMPILE_FLAGS, "-c", str(SOURCE), "-o", str(obj)], [compiler, str(obj), "-o", str(lib), *link]):
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"`{' '.join(command)}` failed: {result.stderr.strip()[-500:]}")
        os.replace(lib, target)


@functools.lru_cache(maxsize=None)
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    """``(library, None)``, or ``(None, why it is unavailable)``."""
    if os.environ.get("ALIGNKIT_CPU_ATTENTION", "fused") == "unfused":
        return None, "ALIGNKIT_CPU_ATTENTION=unfused"
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None, f"no C compiler ({os.environ.get('CC', 'cc')!r} not found)"
    key = hashlib.sha256("\n".join([SOURCE.read_text(), compiler, *COMPILE_FLAGS, *LINK_FLAGS, _cpu_flags()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"attention_kernel-{key}.so"
    try:
        if not target.exists():
            _build(compiler, target)
        library = ctypes.CDLL(str(target))
    except (OSError, RuntimeError) as error:
        return None, f"the fused CPU attention kernel could not be built: {error}"
    pointer, index = ctypes.c_void_p, ctypes.c_int64
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        sizes, bias = [index] * 5, [pointer, index, index, index]
        getattr(library, f"attention_forward_{suffix}").argtypes = [*sizes, pointer, pointer, pointer, *bias, pointer, real, pointer, pointer, ctypes.c_int]
        getattr(library, f"attention_backward_{suffix}").argtypes = [
            *sizes, pointer, pointer, pointer, *bias, pointer, real, pointer, pointer, pointer, pointer, pointer, pointer, ctypes.c_int,
        ]  # fmt: skip
    return library, None


def fused_attention_unavailable() -> str | None:
    """None when the fused CPU kernel can run here, else the reason (the unfused core runs instead)."""
    return _load()[1]


def _address(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _bias_arguments(bias: Tensor | None, batch: int, heads: int, t_target: int, t_source: int) -> list:
    if bias is None:
        return [None, 0, 0, 0]
    strides = bias.expand(batch, heads, t_target, t_source).stride()
    return [bias.data_ptr(), *strides[:3]]


def bias_supported(bias_shape: torch.Size) -> bool:
    """The kernel reads a bias row with unit stride: its last dimension must be ``T_s`` itself."""
    return len(bias_shape) == 0 or bias_shape[-1] != 1


class FusedCpuAttention(torch.autograd.Function):
    """``scale * (softmax(q k^T + bias) * mask) v`` over ``(batch * heads, T, h)`` blocks with the
    fused kernel; the same contract as :class:`~alignkit_models.layers.attention._CpuAttention`,
    except that ``bias`` is ``(B | 1, H | 1, T_t | 1, T_s)`` with :data:`MASKED` where a step is
    not allowed."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, heads: int, query: Tensor, key: Tensor, value: Tensor, bias: Tensor | None, mask: Tensor | None, scale: float) -> Tensor:
        library, _ = _load()
        # k^T and v^T, (N, h, T_s): the kernel's inner loops run along T_s
        query, key_t, value_t = query.contiguous(), key.transpose(1, 2).contiguous(), value.transpose(1, 2).contiguous()
        n_blocks, t_target, width = query.shape
        t_source = key.shape[1]
        out = query.new_empty(query.shape)
        lse = query.new_empty(n_blocks, t_target)
        suffix = "f32" if query.dtype == torch.float32 else "f64"
        bias_args = _bias_arguments(bias, n_blocks // heads, heads, t_target, t_source)
        getattr(library, f"attention_forward_{suffix}")(
            n_blocks, heads, t_target, t_source, width, query.data_ptr(), key_t.data_ptr(), value_t.data_ptr(), *bias_args,
            _address(mask), scale, out.data_ptr(), lse.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        ctx.heads, ctx.scale = heads, scale
        ctx.save_for_backward(query, key_t, value_t, bias, mask, out, lse)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad: Tensor):
        library, _ = _load()
        query, key_t, value_t, bias, mask, out, lse = ctx.saved_tensors
        grad = grad.to(query.dtype).contiguous()
        n_blocks, t_target, width = query.shape
        t_source = key_t.shape[2]
        grad_query, grad_key_t, grad_value_t = torch.empty_like(query), torch.empty_like(key_t), torch.empty_like(value_t)
        suffix = "f32" if query.dtype == torch.float32 else "f64"
        bias_args = _bias_arguments(bias, n_blocks // ctx.heads, ctx.heads, t_target, t_source)
        getattr(library, f"attention_backward_{suffix}")(
            n_blocks, ctx.heads, t_target, t_source, width, query.data_ptr(), key_t.data_ptr(), value_t.data_ptr(), *bias_args,
            _address(mask), ctx.scale, out.data_ptr(), lse.data_ptr(), grad.data_ptr(),
            grad_query.data_ptr(), grad_key_t.data_ptr(), grad_value_t.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return None, grad_query, grad_key_t.transpose(1, 2), grad_value_t.transpose(1, 2), None, None, None
