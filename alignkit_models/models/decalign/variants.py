"""The two DecAlign variants as one table of options: the authors' code and alignkit's.

``create_model("decalign", variant=...)`` starts from a column of :data:`OPTIONS` and applies
any option given explicitly on top. ``"official"`` (the default) is the network and objective of
the authors' public code (taco-group/DecAlign, commit 6fa8df9, with its CMU-MOSI configuration):
for three modalities the same function, value for value. ``"alignkit"`` is our reading of the
paper with the changes that made it train faster and more stably here. Every row is one option;
the README's option table is generated from this one (a test keeps them equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Variant = Literal["official", "alignkit"]
VARIANTS: tuple[str, ...] = ("official", "alignkit")


@dataclass(frozen=True)
class Option:
    """One model option: its value in each variant and what the paper's text says about it."""

    name: str
    official: Any
    alignkit: Any
    paper: str
    meaning: str


OPTIONS: tuple[Option, ...] = (
    # --- architecture
    Option("dim", 64, 64, "not given", "common width d after the projection"),
    Option("n_heads", 8, 8, "not given", "attention heads"),
    Option("n_layers", 5, 4, "not given", "layers per cross-modal transformer"),
    Option("kernel_size", 1, 1, "1-D temporal convolution", "temporal kernel of the projection (int or per-modality mapping)"),
    Option("projection_padding", "valid", "same", "keeps the temporal length", "'valid': no padding (T - k + 1 steps); 'same': odd kernels keep T"),
    Option("project_equal_width", False, True, "every modality", "project a modality whose width is already d (False: identity)"),
    Option("feature_encoder", "linear", "linear_gelu", "not given", "unique/common encoders: per-step linear map without bias, or linear + GELU"),
    Option("cross_modal", "joint", "pairwise", "multimodal transformer [MulT]", "'joint': M encoders, each stream attends to the others' concatenated; 'pairwise': M(M-1)"),
    Option("transformer_norm", "post", "pre", "not given", "LayerNorm after (post) or before (pre, with a final LayerNorm) each sub-layer"),
    Option("positional_encoding", False, True, "not given", "sinusoidal positions added to the transformer inputs"),
    Option("feedforward_init", "torch", "xavier", "not given", "transformer feed-forward initialisation: nn.Linear default or Xavier/zero bias"),
    Option("independent_key_value_dropout", True, False, "not given", "embedding dropout drawn separately for attention keys and values"),
    Option("fast_dropout", True, True, "not given", "dropout masks from FastDropout (nn.Dropout's distribution, an eighth of the random draws) or nn.Dropout drawing the authors' masks (same seed, same masks)"),
    Option("attn_dropout", {"text": 0.1}, 0.0, "not given", "attention-weight dropout, one rate or a rate per (target) modality, others 0"),
    Option("relu_dropout", 0.1, 0.1, "not given", "dropout after the feed-forward ReLU"),
    Option("res_dropout", 0.05, 0.1, "not given", "dropout on each residual branch"),
    Option("embed_dropout", 0.1, 0.1, "not given", "dropout on the scaled transformer inputs"),
    Option("output_dropout", 0.0, 0.1, "not given", "dropout before the head (and inside the distribution encoders)"),
    Option("input_dropout", 0.0, 0.0, "not given", "dropout on the raw input features, one rate or per modality (official: text only)"),
    Option("use_masks", False, True, "not given", "padding masks in pooling and attention (False: every step counts, padding included)"),
    Option("common_fusion", "concat", "mean", "concatenated with the common features", "head input: the M pooled common streams concatenated (2 M d) or their mean"),
    Option("distribution_encoder", True, False, "not given", "per-modality Linear-ReLU-Dropout-Linear on the pooled common features before L_homo"),
    Option("distribution_dim", 0, 0, "not given", "output width of the distribution encoders (0: d)"),
    # --- objective
    Option("alpha", 0.05, 0.05, "0.05 (sensitivity study)", "weight of L_hete"),
    Option("beta", 0.07, 0.05, "0.05 (sensitivity study)", "weight of L_homo"),
    Option("decoupling_mode", "squared", "squared", "signed cosine (eq. 1)", "penalty on cos(F_uni, F_com): squared, abs or signed"),
    Option("decoupling_reduction", "mean", "sum", "sum over modalities (eq. 1)", "L_dec over modalities: mean or sum"),
    Option("n_components", 7, 7, "not given", "Gaussian prototypes K per modality"),
    Option("covariance_type", "diag", "diag", "covariance per component", "prototype covariances"),
    Option("gmm_iterations", 5, 3, "EM (eqs. 2-4)", "EM steps per batch"),
    Option("gmm_init", "spaced", "kmeans++", "not given", "starting means: evenly spaced rows or k-means++ (then running prototypes)"),
    Option("gmm_momentum", 0.0, 0.1, "not given", "running prototypes across batches (0: a fresh fit per batch)"),
    Option("gmm_regularization", "clamp", "add", "not given", "variances floored at gmm_reg_covar (official) or increased by it (scikit-learn)"),
    Option("gmm_reg_covar", 1e-4, 1e-6, "not given", "variance floor / regulariser"),
    Option("gmm_grad", "unrolled", "last_step", "not given", "gradients through every EM step or only the last"),
    Option("ot_marginals", "responsibilities", "weights", "mixture weights (eq. 8)", "OT marginals: mean responsibilities per component, or the mixture weights"),
    Option("ot_epsilon", 0.1, 0.1, "entropic regularisation", "entropic epsilon (absolute, or times the mean cost)"),
    Option("ot_relative_epsilon", False, True, "not given", "scale ot_epsilon by the mean joint cost"),
    Option("ot_objective", "regularized", "transport", "<P, C> (eq. 9)", "L_OT = <P, C> + epsilon * entropy, or <P, C>"),
    Option("ot_iterations", 50, 200, "Sinkhorn", "Sinkhorn sweeps (at most)"),
    Option("ot_tol", 0.0, 1e-4, "not given", "stop when the marginal error is below (0: run every sweep)"),
    Option("ot_grad", "unrolled", "envelope", "not given", "gradients through every sweep, or envelope-theorem gradients"),
    Option("ot_kernel_floor", 1e-30, 0.0, "not given", "floor of exp(-C / epsilon), as the official linear-domain iteration"),
    Option("ot_scaling_guard", 1e-8, 0.0, "not given", "added to each Sinkhorn denominator, as the official iteration"),
    Option("cost_reduction", "mean", "sum", "squared W2 (eq. 6), squared distance (eq. 9)", "Bures and sample-to-prototype costs: mean or sum over features"),
    Option("bures_eps", 1e-8, 0.0, "not given", "added under the square root of the diagonal Bures cross term"),
    Option("matching", "index", "plan", "component k to component k (eq. 9)", "calibration targets: same-index prototype, or barycentre through the OT plan"),
    Option("moment_reduction", "mean", "sum", "squared norms, 1/(M(M-1)) (eq. 10)", "L_sem terms: mean squared errors averaged over pairs, or the paper's form"),
    Option("skewness_variance_floor", 1e-6, 0.0, "not given", "variance floor in the skewness (0: skewness 0 where the spread is round-off)"),
    Option("mmd_sigma", 1.0, "median", "bandwidth sigma (eq. 12)", "Gaussian MMD bandwidth (float, list or 'median')"),
    Option("contrastive_weight", 0.003, 0.0, "supervised contrastive term (table 4)", "weight of a supervised contrastive term on the fused representation"),
    Option("contrastive_temperature", 0.1, 0.1, "not given", "its temperature"),
    Option("binary_task_weight", 0.0, 0.0, "not given", "weight of a sign (BCE) term on non-zero regression labels (official CH-SIMS: 0.01)"),
)

OPTION_NAMES: tuple[str, ...] = tuple(option.name for option in OPTIONS)


def variant_options(variant: str) -> dict[str, Any]:
    """Every option's value in ``variant`` (``"official"`` or ``"alignkit"``)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, received {variant!r}")
    return {option.name: getattr(option, variant) for option in OPTIONS}


def _cell(value: Any) -> str:
    return "None" if value is None else f"`{value!r}`" if not isinstance(value, str) else f"`{value}`"


def option_table() -> str:
    """The README's Markdown table: option | official | paper text | alignkit variant | meaning."""
    lines = ["| option | official (default) | paper text | `variant=\"alignkit\"` | what it sets |", "|---|---|---|---|---|"]
    for o in OPTIONS:
        lines.append(f"| `{o.name}` | {_cell(o.official)} | {o.paper} | {_cell(o.alignkit)} | {o.meaning} |")
    return "\n".join(lines)
