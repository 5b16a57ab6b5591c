"""Specification of the fusion baselines: early/late fusion, TFN, LMF, MFM, CubeMLP, and their sequence helpers."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from alignkit_models.layers.sequence import SequenceEncoder, align_modalities, resample_segments
from alignkit_models.models.cubemlp import AxisMLP, CubeMLP
from alignkit_models.models.early_fusion import EarlyFusion
from alignkit_models.models.late_fusion import LateFusion
from alignkit_models.models.lmf import LMF, low_rank_fusion
from alignkit_models.models.mfm import MFM, MemoryFusion, mfm_mmd
from alignkit_models.models.tfn import TFN, tensor_fusion

MOSI_DIMS = {"text": 768, "audio": 5, "vision": 20}
UCI_DIMS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}


def _features(dims: dict[str, int], lengths: dict[str, int], batch: int = 4, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, lengths[m], d, generator=g) for m, d in dims.items()}


def _prefix_mask(lengths: list[int], total: int) -> Tensor:
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]


# --- shared sequence helpers -------------------------------------------------------------------


def test_resample_segments_averages_equal_segments_of_the_real_span_and_ignores_padding() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 99.0, 99.0]]).unsqueeze(-1)  # 4 real steps, 2 padded
    mask = _prefix_mask([4], 6)
    assert resample_segments(x, mask, 2).flatten().tolist() == [1.5, 3.5]
    assert resample_segments(x, mask, 4).flatten().tolist() == [1.0, 2.0, 3.0, 4.0]


def test_resample_segments_copies_steps_when_the_sequence_is_shorter_than_the_time_base() -> None:
    x = torch.tensor([[5.0, 7.0, 99.0]]).unsqueeze(-1)
    assert resample_segments(x, _prefix_mask([2], 3), 4).flatten().tolist() == [5.0, 5.0, 7.0, 7.0]


def test_align_modalities_keeps_aligned_steps_and_resamples_unaligned_ones() -> None:
    features = _features({"a": 3, "b": 2}, {"a": 5, "b": 5})
    shared = _prefix_mask([5, 4, 3, 2], 5)
    aligned, mask = align_modalities(features, {"a": shared, "b": shared}, n_steps=7)
    assert torch.equal(mask, shared) and aligned["a"].shape == (4, 5, 3)
    assert torch.equal(aligned["a"][~shared], torch.zeros(int((~shared).sum()), 3))  # padding comes back as 0

    unaligned, mask = align_modalities(features, {"a": shared, "b": _prefix_mask([1, 2, 3, 4], 5)}, n_steps=7)
    assert bool(mask.all()) and unaligned["a"].shape == (4, 7, 3) and unaligned["b"].shape == (4, 7, 2)


def test_last_step_pooling_reads_the_state_after_the_last_real_step() -> None:
    encoder = SequenceEncoder(3, 8, pooling="last")
    x = torch.randn(2, 6, 3)
    pooled = encoder(x, _prefix_mask([4, 6], 6))
    assert torch.allclose(pooled[0], encoder(x[:1, :4], torch.ones(1, 4, dtype=torch.bool))[0], atol=1e-6)
    assert torch.allclose(pooled[1], encoder(x[1:], torch.ones(1, 6, dtype=torch.bool))[0], atol=1e-6)


# --- early and late fusion ---------------------------------------------------------------------


def test_early_fusion_aligns_unaligned_inputs_by_resampling_each_modality_to_n_steps() -> None:
    dims = {"text": 768, "audio": 33}
    features = _features(dims, {"text": 7, "audio": 20})
    masks = {"text": _prefix_mask([7, 5, 2, 1], 7), "audio": _prefix_mask([20, 3, 11, 1], 20)}
    model = EarlyFusion(dims, n_steps=6).eval()
    resampled = {m: resample_segments(features[m], masks[m], 6) for m in dims}
    assert torch.allclose(model(features, masks).prediction, model(resampled).prediction, atol=1e-5)


def test_late_fusion_runs_with_all_but_one_modality_zeroed() -> None:
    features = _features(MOSI_DIMS, dict.fromkeys(MOSI_DIMS, 6))
    only_text = {m: x if m == "text" else torch.zeros_like(x) for m, x in features.items()}
    output = LateFusion(MOSI_DIMS).eval()(only_text)
    assert output.prediction.shape == (4,) and bool(torch.isfinite(output.prediction).all())
    assert output.representation is not None and output.representation.shape == (4, 64)


# --- TFN ---------------------------------------------------------------------------------------


def test_tensor_fusion_is_the_flattened_outer_product_of_the_one_extended_vectors() -> None:
    z = [torch.randn(2, 2), torch.randn(2, 3), torch.randn(2, 1)]
    ones = [torch.cat([torch.ones(2, 1), v], dim=1) for v in z]
    explicit = torch.einsum("bi,bj,bk->bijk", *ones)
    fused = tensor_fusion(z)
    assert fused.shape == (2, 3 * 4 * 2)  # prod(d_m + 1)
    assert torch.allclose(fused, explicit.flatten(1))
    # The constant 1 keeps each unimodal vector inside the product.
    assert torch.allclose(explicit[:, 1:, 0, 0], z[0]) and torch.allclose(explicit[:, 0, 1:, 0], z[1])


@pytest.mark.parametrize(("dims", "width"), [(MOSI_DIMS, 15), (UCI_DIMS, 3)])
def test_tfn_default_fusion_width_shrinks_so_that_the_product_stays_tractable(dims: dict[str, int], width: int) -> None:
    task = {"task": "classification", "n_classes": 10} if len(dims) == 6 else {}
    model = TFN(dims, **task).eval()
    output = model({m: torch.randn(3, 1, d) for m, d in dims.items()})
    assert output.representation is not None and output.representation.shape == (3, (width + 1) ** len(dims))


def test_tfn_refuses_an_explicit_fusion_width_beyond_the_budget() -> None:
    with pytest.raises(ValueError, match="lmf"):
        TFN(UCI_DIMS, task="classification", n_classes=10, fusion_dim=32)


def test_tfn_regression_output_stays_in_the_sigmoid_range() -> None:
    features = {m: 100 * x for m, x in _features(MOSI_DIMS, dict.fromkeys(MOSI_DIMS, 4)).items()}
    prediction = TFN(MOSI_DIMS, output_range=(-1.0, 1.0)).eval()(features).prediction
    assert bool((prediction.abs() <= 1.0).all())


# --- LMF ---------------------------------------------------------------------------------------


def test_low_rank_fusion_equals_tfn_product_times_the_recomposed_full_weight() -> None:
    """The low-rank identity: sum_i lambda_i prod_m (z_m W_m^i) = Z . (sum_i lambda_i (x)_m W_m^i)."""
    widths, rank, out = (2, 3, 1), 4, 2
    vectors = [torch.randn(5, w, dtype=torch.float64) for w in widths]
    factors = [torch.randn(rank, w + 1, out, dtype=torch.float64) for w in widths]
    weights, bias = torch.randn(rank, dtype=torch.float64), torch.randn(out, dtype=torch.float64)
    full_weight = torch.einsum("r,rio,rjo,rko->ijko", weights, *factors).reshape(-1, out)
    explicit = tensor_fusion(vectors) @ full_weight + bias
    assert torch.allclose(low_rank_fusion(vectors, factors, weights, bias), explicit)


def test_lmf_output_does_not_vanish_at_initialisation_with_six_modalities() -> None:
    """The product over six modality projections starts near 1 (constant-one rows at 1), not
    near 0: with all-Xavier factors it was ~1e-7 and LMF never left chance on UCI."""
    torch.manual_seed(0)
    model = LMF(UCI_DIMS, task="classification", n_classes=10).eval()
    logits = model(_features(UCI_DIMS, dict.fromkeys(UCI_DIMS, 1), batch=16)).prediction
    assert logits.std(0).mean() > 1e-2 and logits.abs().max() < 1e3


# --- MFM ---------------------------------------------------------------------------------------


def test_mfm_mmd_uses_the_papers_kernel_exp_of_minus_mean_squared_difference_over_d() -> None:
    z, prior = torch.randn(6, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-((a[:, None] - b[None]) ** 2).mean(-1) / a.shape[1]).mean()

    explicit = kernel(z, z) + kernel(prior, prior) - 2 * kernel(z, prior)
    assert torch.allclose(mfm_mmd(z, prior), explicit)


def test_mfm_reports_reconstruction_and_mmd_terms_in_training_only() -> None:
    model = MFM(MOSI_DIMS, reconstruction_weight={"text": 0.5, "audio": 0.01, "vision": 0.5}, mmd_weight=10.0)
    features = _features(MOSI_DIMS, dict.fromkeys(MOSI_DIMS, 5))
    output = model.train()(features)
    expected = {f"reconstruction_{m}" for m in MOSI_DIMS} | {"mmd_y"} | {f"mmd_{m}" for m in MOSI_DIMS}
    assert set(output.components) == expected
    weighted = 0.5 * output.components["reconstruction_text"] + 0.01 * output.components["reconstruction_audio"]
    weighted = weighted + 0.5 * output.components["reconstruction_vision"]
    assert torch.allclose(output.aux_losses["reconstruction"], weighted)
    mmd = sum(v for k, v in output.components.items() if k.startswith("mmd_"))
    assert torch.allclose(output.aux_losses["mmd"], 10.0 * mmd)

    evaluated = model.eval()(features)
    assert evaluated.aux_losses == {} and evaluated.components == {}


def test_mfm_reconstruction_loss_decreases_over_a_few_steps() -> None:
    dims = {"a": 4, "b": 3}
    model = MFM(dims, hidden_dim=8, memory_dim=8, zy_dim=8, z_dim=4, fy_dim=4, f_dim=4, dropout=0.0).train()
    features = _features(dims, {"a": 4, "b": 4}, batch=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)

    def reconstruction() -> Tensor:
        return model(features).aux_losses["reconstruction"]

    first = float(reconstruction().detach())
    for _ in range(8):
        optimizer.zero_grad()
        reconstruction().backward()
        optimizer.step()
    assert float(reconstruction().detach()) < 0.95 * first


def test_memory_fusion_keeps_its_state_on_padded_steps() -> None:
    fusion = MemoryFusion([3, 2], hidden_dim=4, memory_dim=5, mlp_dim=6, out_dim=7, dropout=0.0)
    sequences = [torch.randn(1, 6, 3), torch.randn(1, 6, 2)]
    padded = fusion(sequences, _prefix_mask([3], 6))
    truncated = fusion([x[:, :3] for x in sequences], torch.ones(1, 3, dtype=torch.bool))
    assert torch.allclose(padded, truncated, atol=1e-6)


# --- CubeMLP -----------------------------------------------------------------------------------


def test_cube_units_mix_only_their_own_axis() -> None:
    """The sequence unit mixes time within each modality; the modality unit mixes across modalities."""
    cube = torch.randn(2, 5, 3, 4)
    changed = cube.clone()
    changed[:, :, 0] += 1.0  # perturb modality 0 only
    sequence_unit, modality_unit = AxisMLP(1, 5, 6, 5, 0.0), AxisMLP(2, 3, 3, 3, 0.0)
    assert torch.allclose(sequence_unit(changed)[:, :, 1:], sequence_unit(cube)[:, :, 1:])
    assert not torch.allclose(modality_unit(changed)[:, :, 1:], modality_unit(cube)[:, :, 1:])


def test_a_cube_block_carries_each_modality_into_the_others_slots() -> None:
    dims = {"a": 4, "b": 4, "c": 4}
    model = CubeMLP(dims, dropout=0.0).eval()
    features = _features(dims, dict.fromkeys(dims, 6))
    changed = {**features, "a": features["a"] + 1.0}
    masks, block = model.check_inputs(features, None), model.blocks[0]
    before, after = block(model.build_cube(features, masks)), block(model.build_cube(changed, masks))
    assert not torch.allclose(after[:, :, 1:], before[:, :, 1:])  # slots of b and c see the change in a


def test_cubemlp_cube_pads_short_modalities_with_zeros_and_resamples_long_ones() -> None:
    dims = {"text": 768, "audio": 5}
    model = CubeMLP(dims, time_len=10, channels=8, blocks=((10, 8), (4, 4))).eval()
    features = _features(dims, {"text": 6, "audio": 40}, batch=2)
    masks = {"text": _prefix_mask([6, 3], 6), "audio": _prefix_mask([40, 25], 40)}
    cube = model.build_cube(features, masks)
    assert cube.shape == (2, 10, 2, 8)
    assert bool((cube[0, 6:, 0] == 0).all()) and bool((cube[1, 3:, 0] == 0).all())  # text: real steps, then zeros
    encoded_audio = model.encoders["audio"](features["audio"], masks["audio"])
    assert torch.allclose(cube[:, :, 1], resample_segments(encoded_audio, masks["audio"], 10), atol=1e-6)


def test_cubemlp_head_widens_to_128_hidden_units_for_wide_pooled_cubes() -> None:
    narrow, wide = CubeMLP(MOSI_DIMS), CubeMLP(MOSI_DIMS, blocks=((20, 32), (5, 64)))
    assert isinstance(narrow.head, nn.Linear)
    assert isinstance(wide.head, nn.Sequential) and wide.head[0].out_features == 128
