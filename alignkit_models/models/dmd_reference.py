"""Load the weights of DMD's released code (mdswyz/DMD, CVPR 2023) into the zoo's :class:`DMD`.

The authors' network is ``DMD`` in ``trains/singleTask/model/dmd.py``; its two graph-distillation
units are separate modules (``DistillationKernel`` in ``trains/singleTask/distillnets/``, one
for the homogeneous and one for the heterogeneous branch) with their own ``state_dict``. The
code is written for exactly three inputs, named by a letter: ``l`` (text), ``a`` (audio) and
``v`` (vision). Our model is built with the modalities ``("text", "audio", "vision")``, the order
of the code's ``forward(text, audio, video)``, whose cross-modal transformers concatenate their
sources in that order too. The code's fusion vectors are ordered l, v, a instead: the converter
reorders the blocks of the layers that read or write them (marked *reordered*). Parameter names::

    DMD                                         ours  (x in l, a, v -> m in text, audio, vision)
    proj_x.weight (d, d_m, k)                   projections.m.conv.weight (dropped when d_m = d:
                                                the code skips the Conv1d)
    encoder_s_x.weight (d, d, 1)                private.m.weight (d, d)
    encoder_c.weight (d, d, 1)                  common.weight
    decoder_x.weight (d, 2d, 1)                 decoders.m.weight (d, 2d)
    proj1_x_low, proj2_x_low, out_layer_x_low   homo_heads.m.proj1, .proj2, .out
    align_c_x (d, d T')                         margin_projections.m (columns reordered from the
                                                code's channel-major flattening to time-major)
    self_attentions_c_x.<encoder part>          common_encoders.m.<our part>
    proj1_c, proj2_c, out_layer_c               common_head.proj1, .proj2, .out     (reordered)
    trans_x_with_y.<encoder part>               crossmodal.cross.m_from_n.<our part>
    trans_x_mem.<encoder part>                  crossmodal.memory.m.<our part>
    proj1_x_high, proj2_x_high, out_layer_x_high
                                                hetero_heads.m.proj1, .proj2, .out
    weight_x (2d, 2d)                           gates.m
    weight_c (3d, 3d)                           common_gate                         (reordered)
    proj1, proj2, out_layer (9d)                fusion_head.proj1, .proj2, .out     (reordered)
    proj_cosine_x.*                             dropped: the code computes ``proj_s_x`` with
                                                them, but no loss reads it

    DistillationKernel (homo / hetero)          gd_homo / gd_hetero
    W_logit.*, W_repr.*, W_edge.*               logit_code.*, repr_code.*, edge_score.*

with, inside every transformer, the names of
:data:`~alignkit_models.layers.transformer.MULT_LAYER_NAMES` under ``layers.<k>.`` and
``layer_norm.*`` -> ``norm.*``; fairseq's ``version`` and ``embed_positions._float_tensor``
buffers are dropped. The kernels' edge priors are not weights: ours follow from the modality
names and equal the code's ``softmax([0, 0, 1, 0, 1, 0] / 0.25)`` (homogeneous) and
``softmax([0, 0, 1, 0, 1, 1] / 0.25)`` (heterogeneous).

Widths, kernels, layer counts, the fixed sequence lengths (from the flattened Linear layers) and
the GD code widths are read from the shapes; the head count is not in the weights.
:data:`REFERENCE_OPTIONS` holds the options that restore what the code does differently from our
defaults (see the :mod:`~alignkit_models.models.dmd` docstring) and the MOSI hyper-parameters of
``config/config.json``. With them, in eval mode the converted model's ``prediction`` is the
code's ``output_logit`` (squeezed), padded samples included; in training (GD kernels given,
dropout off) ``model.loss(output, labels).total`` is the code's ``combined_loss`` of
``trains/singleTask/DMD.py`` and every parameter gets the same gradient.

What is not covered: the code's BERT text encoder (``use_bert=True`` in its config fine-tunes
``bert-base-uncased``, which needs a download; our DMD reads 768-d text features, the code's
``use_bert=False`` path); dropout draw for draw (the rates and places match, the random streams
do not: equality holds with dropout off); and the training loop (Adam without weight decay,
gradients accumulated over ``update_epochs`` batches, value clipping), which is the trainer's
business. The code's ``L_ort`` runs only on the PyTorch 1.9 of
its README (later versions reject its 3-D ``CosineEmbeddingLoss`` inputs); ``ort_loss=
"batch_relu"`` is that version's result. The code has one output (regression only).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from alignkit_models.layers.transformer import MULT_LAYER_NAMES
from alignkit_models.models.base import clean_reference_state_dict, load_converted_state_dict
from alignkit_models.models.dmd import DMD

MODALITIES: dict[str, str] = {"l": "text", "a": "audio", "v": "vision"}
"""The code's modality letters -> our names, in the order of our model (the code's inputs)."""
FUSION_ORDER = ("l", "v", "a")
"""The order of the modalities in the code's concatenated fusion and common vectors."""

REFERENCE_OPTIONS: dict[str, Any] = {
    "n_heads": 10,
    "projection_padding": "valid",
    "identity_same_width": True,
    "padding": "included",
    "position_table": "fairseq",
    "future_mask": True,
    "independent_key_value_dropout": True,
    "decoupling_bias": False,
    "homo_pooling": "flatten",
    "gd_homo_repr": "relu",
    "gd_hetero_repr": "head",
    "gd_repr_weighting": "batch_mean",
    "ort_loss": "batch_relu",
    "margin_reduction": "anchors",
    "regression_loss": "l1",
    "text_dropout": 0.5,
    "attn_dropout": {"text": 0.3, "audio": 0.2, "vision": 0.0},
    "memory_attn_dropout": 0.3,
    "relu_dropout": 0.0,
    "res_dropout": 0.0,
    "embed_dropout": 0.2,
    "out_dropout": 0.5,
    "gd_alpha": 1 / 8,
    "gd_weight": 0.05,
    "decoupling_weight": 0.1,
    "margin_ort_weight": 0.1,
    "margin": 0.15,
    "repr_weight": 10.0,
    "prior_weight": 10.0,
}
"""The code's structure (see the :mod:`~alignkit_models.models.dmd` docstring) and its MOSI
settings in ``config/config.json`` (10 heads; dropouts text 0.5, attention l/a/v 0.3/0.2/0.0,
ReLU 0, residual 0, embedding 0.2, output 0.5; ``attn_mask`` on; L1 task loss) for what the
weights do not fix. The loss weights are those of ``trains/singleTask/DMD.py`` and ``run.py``
(our defaults, listed for completeness)."""

_FAIRSEQ_CONSTANTS = ("version", "embed_positions._float_tensor")
_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
_ENCODER = re.compile(r"(self_attentions_c_([lav])|trans_([lav])_with_([lav])|trans_([lav])_mem)\.(.+)")
_HEAD_PART = {"proj1": "proj1", "proj2": "proj2", "out_layer": "out"}
_GD = {"W_logit": "logit_code", "W_repr": "repr_code", "W_edge": "edge_score"}


def _unexpected(name: str, key: str) -> ValueError:
    return ValueError(f"{name}: unexpected parameter {key!r}; is this a state_dict of DMD's released code?")


def _tensor(state: Mapping[str, Tensor], key: str, name: str = "state_dict") -> Tensor:
    if key not in state:
        raise ValueError(f"{name}: missing {key!r}; is this a state_dict of DMD's released code?")
    return state[key]


def _encoder_part(part: str, key: str) -> str | None:
    """A name inside the code's ``TransformerEncoder`` -> ours inside ``CrossModalEncoder`` (None: dropped)."""
    if part in _FAIRSEQ_CONSTANTS:
        return None
    if part in ("layer_norm.weight", "layer_norm.bias"):
        return "norm." + part.split(".")[1]
    if (m := _LAYER.fullmatch(part)) and m.group(2) in MULT_LAYER_NAMES:
        return f"layers.{m.group(1)}.{MULT_LAYER_NAMES[m.group(2)]}"
    raise _unexpected("state_dict", key)


def _layer_count(state: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"layers\.(\d+)\.")
    return max((int(m.group(1)) + 1 for key in state if (m := pattern.match(key))), default=0)


def _block_order(width: int) -> Tensor:
    """Indices taking a vector of three ``width`` blocks in :data:`FUSION_ORDER` to our order."""
    return torch.cat([torch.arange(width) + FUSION_ORDER.index(x) * width for x in MODALITIES])


def _fusion_order(dim: int) -> Tensor:
    """Indices taking the code's fused vector ``[l, v, a (2d each), c_l, c_v, c_a (d each)]`` to ours."""
    return torch.cat([_block_order(2 * dim), 6 * dim + _block_order(dim)])


def _reorder(part: str, value: Tensor, order: Tensor, gate: bool = False) -> Tensor:
    """A residual head's (or gate's) parameter for an input vector reordered by ``order``."""
    if gate:  # reads and writes the vector
        return value[order][:, order] if value.ndim == 2 else value[order]
    if part in ("proj1.weight", "out.weight"):  # reads the vector
        return value[:, order]
    if part in ("proj2.weight", "proj2.bias"):  # writes the vector (the residual branch)
        return value[order]
    return value


def infer_options(
    state_dict: Mapping[str, Any],
    homo_state_dict: Mapping[str, Any] | None = None,
    hetero_state_dict: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Model arguments read from the shapes: ``input_dims`` (text, audio, vision), ``dim``,
    ``kernel_size`` (per modality), ``n_layers``, ``memory_layers``, ``sequence_lengths`` (the
    code's fixed ``len_x``, from its flattened Linear layers) and, from the GD kernels when
    given, ``homo_code_dim`` / ``hetero_code_dim``.

    Raises:
        ValueError: a missing key, a malformed shape, or a BERT text encoder in the state_dict.
    """
    state = clean_reference_state_dict(state_dict, "state_dict")
    if any(key.startswith("text_model.") for key in state):
        raise ValueError("state_dict: holds the code's BERT text encoder (use_bert=True), which our DMD does not have")
    dim = int(_tensor(state, "encoder_c.weight").shape[0])
    input_dims: dict[str, int] = {}
    kernels: dict[str, int] = {}
    lengths: dict[str, int] = {}
    for x, m in MODALITIES.items():
        weight = _tensor(state, f"proj_{x}.weight")
        if weight.ndim != 3:
            raise ValueError(f"state_dict['proj_{x}.weight']: expected shape (d, d_in, k), received {tuple(weight.shape)}")
        input_dims[m], kernels[m] = int(weight.shape[1]), int(weight.shape[2])
        flat = int(_tensor(state, f"proj1_{x}_low.weight").shape[1])
        if flat % dim:
            raise ValueError(f"state_dict['proj1_{x}_low.weight']: expected d T' = {dim} T' input features, received {flat}")
        if input_dims[m] == dim and kernels[m] > 1:  # the code skips the Conv1d but sizes its Linear layers for it
            raise ValueError(f"state_dict: {m!r} has width d = {dim} and kernel {kernels[m]} > 1, which the code cannot run")
        lengths[m] = flat // dim + (kernels[m] - 1 if input_dims[m] != dim else 0)
    options: dict[str, Any] = {
        "input_dims": input_dims,
        "dim": dim,
        "kernel_size": kernels,
        "n_layers": _layer_count(state, "trans_l_with_a."),
        "memory_layers": _layer_count(state, "trans_l_mem."),
        "sequence_lengths": lengths,
    }
    if int(_tensor(state, "out_layer.weight").shape[0]) != 1:
        raise ValueError(f"state_dict['out_layer.weight']: the code has one output, received shape {tuple(state['out_layer.weight'].shape)}")
    for key, kernel in (("homo_code_dim", homo_state_dict), ("hetero_code_dim", hetero_state_dict)):
        if kernel is not None:
            name = key.replace("code_dim", "state_dict")
            options[key] = int(_tensor(clean_reference_state_dict(kernel, name), "W_logit.weight", name).shape[0])
    return options


def _convert_kernel(kernel: Mapping[str, Any], name: str, prefix: str) -> dict[str, Tensor]:
    converted = {}
    for key, value in clean_reference_state_dict(kernel, name).items():
        module, _, part = key.partition(".")
        if module not in _GD or part not in ("weight", "bias"):
            raise ValueError(f"{name}: unexpected parameter {key!r}; is this the code's DistillationKernel?")
        converted[f"{prefix}.{_GD[module]}.{part}"] = value
    return converted


def convert_reference_state_dict(
    state_dict: Mapping[str, Any],
    homo_state_dict: Mapping[str, Any] | None = None,
    hetero_state_dict: Mapping[str, Any] | None = None,
) -> dict[str, Tensor]:
    """The code's ``DMD`` (and ``DistillationKernel``) ``state_dict`` in our names.

    Also converts gradients (any dict with the same names and shapes): every step is a
    reshape, a squeeze or a reordering.

    Args:
        state_dict: ``DMD.state_dict()`` (or its named parameters, or their gradients).
        homo_state_dict, hetero_state_dict: the homogeneous / heterogeneous
            ``DistillationKernel.state_dict()``, or None to leave that GD unit out.

    Returns:
        ``{our name: tensor}`` for a :class:`DMD` with modalities ``("text", "audio", "vision")``.

    Raises:
        ValueError: a key the code's modules do not have, naming it.
    """
    state = clean_reference_state_dict(state_dict, "state_dict")
    dim = int(_tensor(state, "encoder_c.weight").shape[0])
    common_order, fusion_order = _block_order(dim), _fusion_order(dim)
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        if m := _ENCODER.fullmatch(key):
            _, common, target, source, memory, part = m.groups()
            if common:
                prefix = f"common_encoders.{MODALITIES[common]}"
            elif memory:
                prefix = f"crossmodal.memory.{MODALITIES[memory]}"
            elif target != source:
                prefix = f"crossmodal.cross.{MODALITIES[target]}_from_{MODALITIES[source]}"
            else:
                raise _unexpected("state_dict", key)
            if (ours := _encoder_part(part, key)) is not None:
                converted[f"{prefix}.{ours}"] = value
            continue
        module, _, part = key.partition(".")
        if part not in ("weight", "bias"):
            raise _unexpected("state_dict", key)
        if module == "encoder_c":
            converted[f"common.{part}"] = value.squeeze(-1)
        elif module in ("proj1_c", "proj2_c", "out_layer_c"):
            ours = f"{_HEAD_PART[module[:-2]]}.{part}"
            converted[f"common_head.{ours}"] = _reorder(ours, value, common_order)
        elif module == "weight_c":
            converted[f"common_gate.{part}"] = _reorder(part, value, common_order, gate=True)
        elif module in _HEAD_PART:
            ours = f"{_HEAD_PART[module]}.{part}"
            converted[f"fusion_head.{ours}"] = _reorder(ours, value, fusion_order)
        elif m := re.fullmatch(r"(proj1|proj2|out_layer)_([lav])_(low|high)", module):
            kind, x, branch = m.groups()
            head = "homo_heads" if branch == "low" else "hetero_heads"
            converted[f"{head}.{MODALITIES[x]}.{_HEAD_PART[kind]}.{part}"] = value
        elif m := re.fullmatch(r"(proj|encoder_s|decoder|proj_cosine|align_c|weight)_([lav])", module):
            kind, x = m.groups()
            name = MODALITIES[x]
            if kind == "proj" and part == "weight":
                if value.ndim != 3:
                    raise ValueError(f"state_dict[{key!r}]: expected shape (d, d_in, k), received {tuple(value.shape)}")
                if value.shape[1] != dim:  # width d: the code skips the Conv1d and this weight
                    converted[f"projections.{name}.conv.weight"] = value
            elif kind in ("encoder_s", "decoder") and part == "weight":
                converted[f"{'private' if kind == 'encoder_s' else 'decoders'}.{name}.weight"] = value.squeeze(-1)
            elif kind == "align_c" and part == "weight":  # (d, d T') channel-major -> time-major
                steps = value.shape[1] // dim
                converted[f"margin_projections.{name}.weight"] = value.reshape(-1, dim, steps).transpose(1, 2).reshape(value.shape)
            elif kind == "align_c":
                converted[f"margin_projections.{name}.bias"] = value
            elif kind == "weight":
                converted[f"gates.{name}.{part}"] = value
            elif kind != "proj_cosine":
                raise _unexpected("state_dict", key)
        else:
            raise _unexpected("state_dict", key)
    if homo_state_dict is not None:
        converted.update(_convert_kernel(homo_state_dict, "homo_state_dict", "gd_homo"))
    if hetero_state_dict is not None:
        converted.update(_convert_kernel(hetero_state_dict, "hetero_state_dict", "gd_hetero"))
    return converted


def from_reference_state_dict(
    state_dict: Mapping[str, Any],
    homo_state_dict: Mapping[str, Any] | None = None,
    hetero_state_dict: Mapping[str, Any] | None = None,
    **options: Any,
) -> DMD:
    """A :class:`DMD` holding the weights of the code's ``DMD`` (and its two GD kernels).

    Args:
        state_dict: ``DMD.state_dict()``; a ``"module."`` prefix is removed.
        homo_state_dict, hetero_state_dict: the ``DistillationKernel`` state_dicts; None keeps our
            freshly initialised GD unit (it only matters in training).
        **options: model options over :data:`REFERENCE_OPTIONS`; widths, kernels, layer counts,
            lengths and GD code widths come from the shapes and must agree when given.

    Returns:
        The model, modalities ``("text", "audio", "vision")``, in training mode like a new
        ``nn.Module``; ``model.eval()(features)`` gives the code's ``output_logit``.

    Raises:
        ValueError: a key the code's modules do not have or one missing, or options that
            disagree with the shapes.
    """
    inferred = infer_options(state_dict, homo_state_dict, hetero_state_dict)
    clashes = sorted(k for k in set(inferred) & set(options) if options[k] != inferred[k])
    if clashes:
        raise ValueError(f"{clashes[0]}: the state_dict has {inferred[clashes[0]]!r}, received {options[clashes[0]]!r}")
    model = DMD(**{**REFERENCE_OPTIONS, **inferred, **options})
    converted = convert_reference_state_dict(state_dict, homo_state_dict, hetero_state_dict)
    # Ours only: the edge priors (buffers fixed by the modality names) and GD units not given.
    defaults = model.state_dict()
    kept = ["gd_homo.prior", "gd_hetero.prior"]
    kept += [k for k in defaults if k.startswith("gd_homo.") and homo_state_dict is None]
    kept += [k for k in defaults if k.startswith("gd_hetero.") and hetero_state_dict is None]
    load_converted_state_dict(model, {**{k: defaults[k] for k in kept}, **converted})
    return model
