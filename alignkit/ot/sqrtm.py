"""Square root of symmetric positive semi-definite matrices with a backward that stays finite.

Autograd through ``torch.linalg.eigh`` divides by eigenvalue gaps and returns NaN whenever two
eigenvalues coincide (``2 * I``, equal Gaussians). The square root ``X = A^{1/2}`` has a
closed-form derivative that needs no gaps: from ``X X = A``, in the eigenbasis ``A = U diag(s) U^T``,

    dX = U [ (U^T dA U)_ij / (sqrt(s_i) + sqrt(s_j)) ] U^T,

which is finite for repeated eigenvalues. Only ``s_i = s_j = 0`` (a singular matrix) makes the
denominator vanish; it is floored at ``sqrt(eps_dtype) * max(max_i sqrt(s_i), 1)``, which bounds
the gradient without changing the value.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignkit._checks import check_tensor, compute_dtype, full_precision


def _gradient_floor(root: Tensor) -> Tensor:
    """Smallest allowed ``sqrt(s_i) + sqrt(s_j)``, per matrix: ``(..., 1)``.

    ``sqrt(eps) * max(largest root, 1)``: relative for large matrices, absolute near zero, so
    that an all-zero covariance still has a bounded gradient (``<= 1 / sqrt(eps)``).
    """
    return torch.finfo(root.dtype).eps ** 0.5 * root.amax(-1, keepdim=True).clamp_min(1.0)


class _SqrtmPSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, matrix: Tensor) -> Tensor:  # type: ignore[override]
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
        root = eigenvalues.clamp_min(0.0).sqrt()
        ctx.save_for_backward(eigenvectors, root)
        return (eigenvectors * root.unsqueeze(-2)) @ eigenvectors.mT

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        eigenvectors, root = ctx.saved_tensors
        grad = 0.5 * (grad + grad.mT)
        in_basis = eigenvectors.mT @ grad @ eigenvectors
        denominator = (root.unsqueeze(-1) + root.unsqueeze(-2)).clamp_min(_gradient_floor(root).unsqueeze(-1))
        return eigenvectors @ (in_basis / denominator) @ eigenvectors.mT


@full_precision
def sqrtm_psd(matrix: Tensor) -> Tensor:
    """Principal square root of symmetric PSD matrices.

    Args:
        matrix: ``(..., d, d)``; symmetrised as ``(A + A^T) / 2`` first, negative eigenvalues
            (round-off) clamped to 0.

    Returns:
        ``(..., d, d)`` symmetric PSD root, in float64 for float64 input, float32 otherwise.
        Its backward is finite at repeated eigenvalues (see the module docstring).
    """
    check_tensor(matrix, "matrix")
    if matrix.ndim < 2 or matrix.shape[-1] != matrix.shape[-2]:
        raise ValueError(f"matrix: expected shape (..., d, d), received {tuple(matrix.shape)}")
    return unchecked_sqrtm_psd(matrix.to(compute_dtype(matrix.dtype)))


def unchecked_sqrtm_psd(matrix: Tensor) -> Tensor:
    """:func:`sqrtm_psd` for internal callers that already validated and cast their input."""
    return _SqrtmPSD.apply(0.5 * (matrix + matrix.mT))


class _SqrtDiagonal(torch.autograd.Function):
    """Elementwise ``sqrt`` of variances: the diagonal case of :class:`_SqrtmPSD`."""

    @staticmethod
    def forward(ctx, variances: Tensor) -> Tensor:  # type: ignore[override]
        root = variances.clamp_min(0.0).sqrt()
        ctx.save_for_backward(root)
        return root

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (root,) = ctx.saved_tensors
        return grad / (2.0 * root).clamp_min(_gradient_floor(root))


def sqrt_diagonal(variances: Tensor) -> Tensor:
    """``sqrt`` of variances ``(..., d)`` with the same floored backward as :func:`sqrtm_psd`."""
    return _SqrtDiagonal.apply(variances)


class _TraceSqrtmPSD(torch.autograd.Function):
    """``Tr(A^{1/2})``: eigenvalues only when no gradient is needed (about twice as fast)."""

    @staticmethod
    def forward(ctx, matrix: Tensor) -> Tensor:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return torch.linalg.eigvalsh(matrix).clamp_min(0.0).sqrt().sum(-1)
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
        root = eigenvalues.clamp_min(0.0).sqrt()
        ctx.save_for_backward(eigenvectors, root)
        return root.sum(-1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        # d Tr(A^{1/2}) = Tr(dA A^{-1/2}) / 2: the sqrtm backward with an identity upstream gradient.
        eigenvectors, root = ctx.saved_tensors
        scale = grad.unsqueeze(-1) / (2.0 * root).clamp_min(_gradient_floor(root))
        return (eigenvectors * scale.unsqueeze(-2)) @ eigenvectors.mT


def trace_sqrtm_psd(matrix: Tensor) -> Tensor:
    """``Tr(sqrtm(A))`` for validated, symmetric PSD ``(..., d, d)`` -> ``(...)``; the same finite
    backward as :func:`sqrtm_psd` (internal: callers validate and cast)."""
    return _TraceSqrtmPSD.apply(0.5 * (matrix + matrix.mT))
