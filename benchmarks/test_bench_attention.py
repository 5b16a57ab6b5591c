"""The attention core at DecAlign's MOSI shapes, forward + backward.

One cross-modal layer's attention: batch 32, 8 heads of width 8, 50 query steps over 100 key
steps (the other two modalities' streams), float32, with a padding mask (some samples shorter)
or none. Training differentiates it, so every case is timed forward + backward (the gradients of
``sum(out * upstream)`` with respect to queries, keys and values).

* ``alignkit``: :func:`alignkit_models.layers.attention.attention` (on a CPU its autograd function
  with the written-out backward; on a GPU SDPA);
* ``sdpa``: ``F.scaled_dot_product_attention`` (torch's fused kernel, what alignkit ran on CPUs before);
* ``autograd``: the same arithmetic as plain ``@`` / ``softmax`` under autograd (the authors' code
  computes attention this way);
* ``alignkit-dropout``, ``autograd-dropout``: the first and last with the attention weights
  dropped at rate 0.1 as in training (DecAlign's MOSI text layers): alignkit's
  :func:`~alignkit_models.layers.dropout.keep_mask` on a CPU, ``F.dropout`` in the plain version.
  Their check draws the same mask again from the same seed.

An untimed check call of each case (also the warm-up) records in ``extra_info`` the largest
difference of the output and of the three gradients from a float64 evaluation of the same
formula, and fails above 1e-5 (float32 round-off here is below 1e-6; a missing ``1/sqrt(h)``
or a dropped mask changes values by more than 1e-2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from conftest import measure

TOLERANCE = 1e-5
DROPOUT = 0.1
BATCH, HEADS, T_QUERY, T_KEY, WIDTH = 32, 8, 50, 100, 8


def cases(full: bool) -> list[tuple[str, str]]:
    masks = ("padding", "none") if full else ("padding",)
    return [(impl, mask) for mask in masks for impl in ("alignkit", "sdpa", "autograd", "alignkit-dropout", "autograd-dropout")]


def _plain(query, key, value, keep, kept=None, dropout=0.0):
    """``kept``: a given scaled keep mask (the float64 check), or None; ``dropout``: the weights
    dropped with ``F.dropout`` (the timed case)."""
    scores = (query * query.shape[-1] ** -0.5) @ key.transpose(-1, -2)
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    weights = F.dropout(scores.softmax(-1), dropout)
    return (weights if kept is None else weights * kept) @ value


def _implementation(impl: str):
    from alignkit_models.layers.attention import attention

    return {
        "alignkit": lambda q, k, v, keep: attention(q, k, v, keep),
        "sdpa": lambda q, k, v, keep: F.scaled_dot_product_attention(q, k, v, attn_mask=keep),
        "autograd": _plain,
        "alignkit-dropout": lambda q, k, v, keep: attention(q, k, v, keep, DROPOUT),
        "autograd-dropout": lambda q, k, v, keep: _plain(q, k, v, keep, dropout=DROPOUT),
    }[impl]


def _kept_mask(impl: str, device: torch.device) -> torch.Tensor | None:
    """The scaled keep mask that ``impl`` draws right after ``torch.manual_seed``, as float64 on the CPU."""
    from alignkit_models.layers.dropout import keep_mask

    shape = (BATCH, HEADS, T_QUERY, T_KEY)
    if impl == "autograd-dropout" or (impl == "alignkit-dropout" and device.type != "cpu"):
        # F.dropout draws its mask from the shape and dtype alone: the same as on the weights.
        return F.dropout(torch.ones(shape, device=device), DROPOUT).double().cpu()
    if impl == "alignkit-dropout":
        return keep_mask(torch.Size(shape), DROPOUT, device, torch.float32, scaled=False).double() / (1 - DROPOUT)
    return None


def test_attention_forward_backward(benchmark, device, case: tuple[str, str]) -> None:
    impl, mask = case
    benchmark.group = f"attention fwd+bwd, B={BATCH} H={HEADS} T={T_QUERY}x{T_KEY} h={WIDTH}, mask {mask}"
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(BATCH, HEADS, t, WIDTH, generator=generator) for t in (T_QUERY, T_KEY, T_KEY)]
    upstream = torch.randn(BATCH, HEADS, T_QUERY, WIDTH, generator=generator)
    keep = None
    if mask == "padding":
        lengths = torch.randint(T_KEY // 2, T_KEY + 1, (BATCH,), generator=generator)
        keep = (torch.arange(T_KEY)[None, :] < lengths[:, None])[:, None, None, :]
    fn = _implementation(impl)

    leaves = [x.to(device, copy=True).requires_grad_() for x in inputs]
    keep_device = None if keep is None else keep.to(device)
    upstream_device = upstream.to(device)
    torch.manual_seed(0)
    out = fn(*leaves, keep_device)
    out.backward(upstream_device)
    torch.manual_seed(0)
    kept = _kept_mask(impl, device)
    reference_leaves = [x.double().requires_grad_() for x in inputs]
    reference = _plain(*reference_leaves, keep, kept)
    reference.backward(upstream.double())
    differences = [float((out.detach().cpu().double() - reference.detach()).abs().max())]
    differences += [float((mine.grad.cpu().double() - theirs.grad).abs().max()) for mine, theirs in zip(leaves, reference_leaves)]
    benchmark.extra_info["max_abs_diff_from_float64"] = {"output": differences[0], "grad_query": differences[1], "grad_key": differences[2], "grad_value": differences[3]}
    assert max(differences) < TOLERANCE, differences

    def run() -> None:
        for leaf in leaves:
            leaf.grad = None
        fn(*leaves, keep_device).backward(upstream_device)

    measure(benchmark, run, device, rounds=50, impl=impl, mask=mask)
