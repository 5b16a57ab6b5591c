"""Specification of MFM and MulT against MMSA 2.2.1 (``models/singleTask/MFM.py``, ``MULT.py``).

Each equivalence test builds MMSA's model with small widths and its feature-input text path
(``use_bert=False``), fills it with random weights, converts its ``state_dict`` with
:mod:`alignkit_models.mmsa.mfm` / :mod:`alignkit_models.mmsa.mult`, and runs the same batch of
text, audio and vision sequences through both in eval mode. The tests skip without MMSA, except
the last ones, which check our own options and initialisation.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from alignkit_models.mmsa import mfm as mmsa_mfm
from alignkit_models.mmsa import mult as mmsa_mult
from alignkit_models.models.mfm import MFM, mfm_mmd_to_standard_normal
from alignkit_models.models.mult import MulT

DIMS = {"text": 12, "audio": 5, "vision": 8}
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
TASKS = ["regression", "classification"]
UCI_DIMS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}


@pytest.fixture(scope="module")
def mmsa() -> SimpleNamespace:
    """MMSA's MFM and MULT classes (the tests that need them skip without MMSA)."""
    pytest.importorskip("MMSA", reason="the MMSA reference toolkit (pip install mmsa==2.2.1) is not installed")
    from MMSA.models.singleTask.MFM import MFM as MMSA_MFM
    from MMSA.models.singleTask.MULT import MULT

    return SimpleNamespace(MFM=MMSA_MFM, MULT=MULT)


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere (zero biases would hide a dropped or swapped bias)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=g))
    return module


def sequences(lengths: dict[str, int], batch: int = 4, seed: int = 1) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, lengths[m], DIMS[m], generator=g) for m in DIMS}


def mmsa_output(model: nn.Module, features: dict[str, Tensor]) -> Any:
    return model(features["text"], features["audio"], features["vision"])


# --- MFM -----------------------------------------------------------------------------------------


def mfm_args(task: str, dropout: float | None = None) -> SimpleNamespace:
    """MMSA's MFM arguments: small, distinct widths (so a swapped block cannot fit), MOSI's dropouts
    (or ``dropout`` everywhere) and loss weights."""

    def rate(value: float) -> float:
        return value if dropout is None else dropout

    return SimpleNamespace(
        feature_dims=(DIMS["text"], DIMS["audio"], DIMS["vision"]),
        hidden_dims=(6, 4, 5),
        zy_size=8,
        zl_size=6,
        za_size=5,
        zv_size=7,
        fy_size=6,
        fl_size=4,
        fa_size=3,
        fv_size=5,
        zy_to_fy_dropout=rate(0.5),
        zl_to_fl_dropout=rate(0.5),
        za_to_fa_dropout=rate(0.7),
        zv_to_fv_dropout=rate(0.5),
        fy_to_y_dropout=rate(0.0),
        memsize=9,
        windowsize=2,
        NN1Config={"drop": rate(0.7), "shapes": 10},
        NN2Config={"drop": rate(0.0), "shapes": 11},
        gamma1Config={"drop": rate(0.0), "shapes": 12},
        gamma2Config={"drop": rate(0.5), "shapes": 13},
        outConfig={"drop": rate(0.2), "shapes": 14},
        lda_xl=0.5,
        lda_xa=0.01,
        lda_xv=0.5,
        train_mode=task,
        num_classes=3,
        device=torch.device("cpu"),
    )


@pytest.mark.parametrize("task", TASKS)
def test_mfm_prediction_matches_mmsa(mmsa: SimpleNamespace, task: str) -> None:
    reference = randomize(mmsa.MFM(mfm_args(task))).eval()
    model = mmsa_mfm.from_mmsa_state_dict(reference.state_dict()).eval()
    features = sequences(dict.fromkeys(DIMS, 6))
    with torch.no_grad():
        expected = mmsa_output(reference, features)[0]
        prediction = model(features).prediction
    assert prediction.shape == ((4,) if task == "regression" else (4, 3))
    torch.testing.assert_close(prediction, expected.squeeze(1) if task == "regression" else expected, **TOLERANCE)


def test_mfm_reconstruction_and_mmd_losses_match_mmsa(mmsa: SimpleNamespace) -> None:
    """In training (every dropout 0, the same seed before both calls) the weighted reconstruction
    is MMSA's ``gen_loss`` and the MMD terms sum to its ``mmd_loss``: the prior draws line up."""
    reference = randomize(mmsa.MFM(mfm_args("regression", dropout=0.0))).train()
    model = mmsa_mfm.from_mmsa_state_dict(
        reference.state_dict(),
        memory_dropout=0.0,
        discriminative_dropout=0.0,
        private_dropout=0.0,
        head_dropout=0.0,
    ).train()
    features = sequences(dict.fromkeys(DIMS, 5))
    torch.manual_seed(7)
    prediction, gen_loss, mmd_loss, _ = mmsa_output(reference, features)
    torch.manual_seed(7)
    output = model(features)
    torch.testing.assert_close(output.prediction, prediction.squeeze(1), **TOLERANCE)
    torch.testing.assert_close(output.aux_losses["reconstruction"], gen_loss, **TOLERANCE)
    mmd = sum(value for key, value in output.components.items() if key.startswith("mmd_"))
    torch.testing.assert_close(mmd, mmd_loss, **TOLERANCE)
    torch.testing.assert_close(output.aux_losses["mmd"], 100.0 * mmd_loss, **TOLERANCE)


def test_mfm_converter_reads_widths_and_mosi_settings_from_the_weights(mmsa: SimpleNamespace) -> None:
    model = mmsa_mfm.from_mmsa_state_dict(mmsa.MFM(mfm_args("regression")).state_dict())
    assert [cell.hidden_size for cell in model.memory_fusion.cells] == [6, 4, 5]
    assert model.memory_fusion.memory_dim == 9
    assert model.reconstruction_weights == {"text": 0.5, "audio": 0.01, "vision": 0.5}
    assert model.mmd_weight == 100.0 and model.regression_loss == "l1" and model.padding == "included"
    assert model.memory_fusion.attention[2].p == 0.7 and model.private_maps["audio"][2].p == 0.7


def test_mfm_converter_names_an_unexpected_key(mmsa: SimpleNamespace) -> None:
    state = mmsa.MFM(mfm_args("regression")).state_dict()
    state["encoder_l.fc2.weight"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"unexpected parameter 'encoder_l\.fc2\.weight'"):
        mmsa_mfm.from_mmsa_state_dict(state)


def test_mfm_converter_names_a_missing_key(mmsa: SimpleNamespace) -> None:
    state = mmsa.MFM(mfm_args("regression")).state_dict()
    del state["mfn_encoder.gamma2_fc1.bias"]
    with pytest.raises(ValueError, match=r"missing 'mfn_encoder\.gamma2_fc1\.bias'"):
        mmsa_mfm.from_mmsa_state_dict(state)


def test_mfm_converter_refuses_another_modality_order(mmsa: SimpleNamespace) -> None:
    state = mmsa.MFM(mfm_args("regression")).state_dict()
    with pytest.raises(ValueError, match="input_dims: MMSA's MFM lays out its MFN text, audio, vision"):
        mmsa_mfm.from_mmsa_state_dict(state, input_dims={"audio": 5, "text": 12, "vision": 8})


# --- MulT ----------------------------------------------------------------------------------------


def mult_args(task: str) -> SimpleNamespace:
    """MMSA's MULT arguments: d = 8 (vision's width, so MMSA skips that projection), 2 heads,
    2 cross-modal layers (3 memory layers), kernels 3 / 1 / 2, MOSI's dropouts."""
    return SimpleNamespace(
        use_bert=False,
        feature_dims=(DIMS["text"], DIMS["audio"], DIMS["vision"]),
        dst_feature_dim_nheads=(8, 2),
        nlevels=2,
        attn_dropout=0.3,
        attn_dropout_a=0.2,
        attn_dropout_v=0.0,
        relu_dropout=0.0,
        embed_dropout=0.2,
        res_dropout=0.0,
        output_dropout=0.5,
        text_dropout=0.5,
        attn_mask=True,
        conv1d_kernel_size_l=3,
        conv1d_kernel_size_a=1,
        conv1d_kernel_size_v=2,
        train_mode=task,
        num_classes=3,
    )


@pytest.mark.parametrize("task", TASKS)
def test_mult_prediction_matches_mmsa(mmsa: SimpleNamespace, task: str) -> None:
    reference = randomize(mmsa.MULT(mult_args(task))).eval()
    model = mmsa_mult.from_mmsa_state_dict(reference.state_dict(), n_heads=2).eval()
    assert set(model.projections) == {"text", "audio"}  # vision has width d already
    features = sequences({"text": 7, "audio": 9, "vision": 6})
    with torch.no_grad():
        expected = mmsa_output(reference, features)["M"]
        prediction = model(features).prediction
    torch.testing.assert_close(prediction, expected.squeeze(1) if task == "regression" else expected, **TOLERANCE)


def test_mult_matches_mmsa_on_a_padded_batch_with_padding_included(mmsa: SimpleNamespace) -> None:
    """MMSA never sees a mask: with ``padding="included"`` the masks change nothing and the
    padded steps are data, as in MMSA."""
    reference = randomize(mmsa.MULT(mult_args("regression"))).eval()
    model = mmsa_mult.from_mmsa_state_dict(reference.state_dict(), n_heads=2).eval()
    lengths = {"text": 7, "audio": 9, "vision": 6}
    features = sequences(lengths)
    masks = {m: torch.arange(t)[None, :] < torch.tensor([[t], [t - 3], [2], [t]]) for m, t in lengths.items()}
    features = {m: torch.where(masks[m][..., None], x, torch.zeros(())) for m, x in features.items()}
    with torch.no_grad():
        expected = mmsa_output(reference, features)["M"].squeeze(1)
        prediction = model(features, masks).prediction
    torch.testing.assert_close(prediction, expected, **TOLERANCE)


def test_mult_converter_reads_structure_and_mosi_settings_from_the_weights(mmsa: SimpleNamespace) -> None:
    model = mmsa_mult.from_mmsa_state_dict(mmsa.MULT(mult_args("regression")).state_dict(), n_heads=2)
    assert model.kernel_sizes == {"text": 3, "audio": 1, "vision": 1}
    assert len(model.crossmodal.cross["text_from_audio"].layers) == 2
    assert len(model.crossmodal.memory["text"].layers) == 3
    assert model.crossmodal.cross["text_from_audio"].layers[0].attention.dropout == 0.2  # source audio
    assert model.crossmodal.cross["audio_from_text"].layers[0].attention.dropout == 0.3
    assert model.crossmodal.cross["text_from_vision"].layers[0].attention.dropout == 0.0
    assert model.crossmodal.memory["audio"].layers[0].attention.dropout == 0.3
    assert not model.crossmodal.memory["text"].positions and model.padding == "included"


def test_mult_converter_names_an_unexpected_key(mmsa: SimpleNamespace) -> None:
    state = mmsa.MULT(mult_args("regression")).state_dict()
    state["trans_l_with_a.layers.0.fc3.weight"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"unexpected parameter 'trans_l_with_a\.layers\.0\.fc3\.weight'"):
        mmsa_mult.from_mmsa_state_dict(state, n_heads=2)


def test_mult_converter_names_a_missing_key(mmsa: SimpleNamespace) -> None:
    state = mmsa.MULT(mult_args("regression")).state_dict()
    del state["trans_v_mem.layer_norm.bias"]
    with pytest.raises(ValueError, match=r"missing 'trans_v_mem\.layer_norm\.bias'"):
        mmsa_mult.from_mmsa_state_dict(state, n_heads=2)


def test_mult_converter_refuses_a_bert_checkpoint(mmsa: SimpleNamespace) -> None:
    state = mmsa.MULT(mult_args("regression")).state_dict()
    state["text_model.model.embeddings.word_embeddings.weight"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="BERT text model"):
        mmsa_mult.from_mmsa_state_dict(state, n_heads=2)


# --- our options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("projection_padding", ["same", "valid"])
def test_mult_padded_sample_predicts_as_its_real_steps_alone(projection_padding: str) -> None:
    """With ``padding="masked"`` a sample padded by 3 steps in every modality (so the future
    mask's offsets ``|T_s - T_t|`` stay the same) gives what its real steps give on their own;
    with ``"valid"`` padding that needs the masks cut to the windows that lie inside the real steps."""
    torch.manual_seed(0)
    model = MulT(DIMS, dim=8, n_heads=2, n_layers=1, kernel_size=3, projection_padding=projection_padding).eval()  # type: ignore[arg-type]
    features = sequences({"text": 7, "audio": 9, "vision": 6}, batch=1)
    padded = {m: torch.cat([x, torch.randn(1, 3, x.shape[2])], 1) for m, x in features.items()}
    masks = {m: torch.arange(x.shape[1])[None, :] < x.shape[1] - 3 for m, x in padded.items()}
    with torch.no_grad():
        torch.testing.assert_close(model(padded, masks).prediction, model(features).prediction, **TOLERANCE)


def test_mult_valid_projection_needs_as_many_steps_as_the_kernel() -> None:
    model = MulT(DIMS, dim=8, n_heads=2, n_layers=1, kernel_size=5, projection_padding="valid")
    with pytest.raises(ValueError, match=r"features\['text'\]: 3 steps, fewer than kernel_size 5"):
        model(sequences({"text": 3, "audio": 6, "vision": 6}))


def test_mfm_padding_included_reads_padded_steps_as_data() -> None:
    torch.manual_seed(0)
    model = MFM(DIMS, padding="included").eval()
    features = sequences(dict.fromkeys(DIMS, 5), batch=2)
    masks = {m: torch.tensor([[True] * 5, [True, True, False, False, False]]) for m in DIMS}
    with torch.no_grad():
        torch.testing.assert_close(model(features, masks).prediction, model(features).prediction, **TOLERANCE)


def test_exact_prior_mmd_is_the_sampled_estimator_averaged_over_prior_draws() -> None:
    """Oracle: MFM's biased estimator (kernel ``exp(-||x - y||^2 / D^2)``, the one :func:`mfm_mmd`
    computes) averaged over 5,000 prior draws of the batch's size. The gradients agree; the
    values differ by the estimator's diagonal constant ``(1 - E k(y, y')) / N`` (0.0085 here)."""
    g = torch.Generator().manual_seed(0)
    n, dim, draws = 32, 6, 5_000
    z = (0.7 * torch.randn(n, dim, generator=g, dtype=torch.float64) + 0.3).requires_grad_()
    prior = torch.randn(draws, n, dim, generator=g, dtype=torch.float64)

    def kernel(squared_distances: Tensor) -> Tensor:
        return torch.exp(-squared_distances / dim**2).mean()

    within = kernel((z[:, None] - z[None]).pow(2).sum(-1))  # explicit: cdist has no gradient at distance 0
    sampled = within + kernel(torch.cdist(prior, prior).pow(2)) - 2 * kernel(torch.cdist(z.expand(draws, n, dim), prior).pow(2))
    exact = mfm_mmd_to_standard_normal(z)
    (sampled_gradient,) = torch.autograd.grad(sampled, z)
    (exact_gradient,) = torch.autograd.grad(exact, z)
    assert float((sampled_gradient - exact_gradient).norm() / exact_gradient.norm()) < 0.03
    diagonal = (1 - (dim**2 / (dim**2 + 4)) ** (dim / 2)) / n
    torch.testing.assert_close(sampled.detach(), exact.detach() + diagonal, atol=1e-3, rtol=0.0)


def test_mfm_rejects_a_mapping_missing_an_mfn_network() -> None:
    with pytest.raises(ValueError, match=r"memory_mlp_dim: expected the keys \['attention', 'proposal', 'retain_gate', 'update_gate'\]"):
        MFM(DIMS, memory_mlp_dim={"attention": 4, "proposal": 4})


def test_mfm_rejects_an_unknown_linear_init() -> None:
    with pytest.raises(ValueError, match="linear_init: expected 'xavier' or 'torch'"):
        MFM(DIMS, linear_init="kaiming")  # type: ignore[arg-type]


def test_mfm_logits_depend_on_the_input_at_initialisation_with_six_views() -> None:
    """With PyTorch's default Linear init the logits' spread over a batch started ~60x below the
    biases (0.002 vs 0.12) and MFM stayed at chance on UCI; Xavier keeps the input visible."""
    torch.manual_seed(0)
    features = {m: torch.randn(64, 1, d) for m, d in UCI_DIMS.items()}

    def spread(linear_init: str) -> float:
        model = MFM(UCI_DIMS, task="classification", n_classes=10, linear_init=linear_init).eval()  # type: ignore[arg-type]
        with torch.no_grad():
            return float(model(features).prediction.std(0).mean())

    assert spread("xavier") > 10 * spread("torch")
