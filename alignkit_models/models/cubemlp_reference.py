"""Load the weights of CubeMLP's released code (kiva12138/CubeMLP, ACM MM 2022) into the zoo's :class:`CubeMLP`.

The authors' model is ``Model`` (``Model.py``): a BERT (``bertmodel``) and a bias-free Linear
``W_t`` for the text, a 2-layer bidirectional GRU and a LayerNorm per other modality (audio
``rnn_a`` / ``ln_a``, vision ``rnn_v`` / ``ln_v``), the MLP blocks of ``MLPProcess.py``
(``mlp_encoder.layers_stack``) and a head ``classifier``. The cube stacks (text, audio, vision)
in that order. Their parameters map onto ours as::

    Model                                              ours
    bertmodel.<name>                                   text_encoder.bert.<name>   (with text_encoder;
                                                       the unused pooler.* is dropped; without
                                                       text_encoder every bertmodel.* is dropped)
    W_t.weight                                         encoders.text.weight
    rnn_a.<GRU parameter>, ln_a.*                      encoders.audio.gru.<GRU parameter>, encoders.audio.norm.*
    rnn_v.<GRU parameter>, ln_v.*                      encoders.vision.gru.<GRU parameter>, encoders.vision.norm.*
    mlp_encoder.layers_stack.<i>.mlp_<x>.fc1.*         blocks.<i>.units.<j>.mlp.0.*
    mlp_encoder.layers_stack.<i>.mlp_<x>.fc2.*         blocks.<i>.units.<j>.mlp.3.*
    mlp_encoder.layers_stack.<i>.ln_<x>.*              blocks.<i>.units.<j>.norm.*
    mlp_encoder.layers_stack.<i>.res_projection_<x>.weight
                                                       blocks.<i>.units.<j>.residual.weight
    classifier.0.*  (a single Linear)                  head.*
    classifier.0.*, classifier.3.*  (128-wide hidden)  head.0.*, head.3.*

with ``<x>`` = ``l``, ``k``, ``d`` (sequence, modality, channel axis) -> ``<j>`` = 0, 1, 2. A
``"module."`` prefix (``DataParallel``) is removed.

The sizes (input widths, ``d_common``, ``time_len``, the blocks' ``d_outs`` and ``d_hiddens``,
``res_project``, ``--bias``, ``--ln_first`` where a size changes, the output size) are read from
the shapes and keys. :data:`REFERENCE_OPTIONS` restores what the code does differently from our
defaults and the README's MOSI run for what the weights do not fix: every modality on BERT's
token axis (audio and vision centred on it, GRUs packed over the text's length), the encoders'
outputs at padded steps kept, truncation at ``time_len``, LayerNorm epsilon 1e-6, no dropout
after the units' GELU, mean over time and concatenation over modalities, dropout 0.1, L1 loss.

With ``text_encoder=PATH`` (a BERT folder of the same configuration as their ``bertmodel``) the
model takes the token ids their ``Train.get_outputs_from_datas`` makes, stacked as ``(B, L, 3)``
(ids, attention mask, segment ids); without it, the text is BERT's last hidden state
``(B, L, hidden)`` with ``masks["text"]`` the attention mask. Audio and vision are the code's
``(B, T, d)`` tensors; their masks are not used (the code derives everything from the text's
mask). In eval mode the prediction is ``Model(...)[0]`` (squeezed for regression). In training,
``model.loss(output, labels).total`` is the script's MAE loss and its gradients are the code's,
BERT's included; with dropout on as well, from the same seed, since both draw their dropout
masks in the same order (text, audio, vision encodings; each unit's output; the head).

Not restored: their ``'lstm'`` and ``'conv'`` encoders and activations other than GELU (the
README run uses ``gru`` and ``gelu``; such weights are refused), separate dropout rates per
modality / axis / head (one ``dropout``; the README run uses 0.1 everywhere), and what their
training script does around the model: truncating a batch's words, audio and vision to
``time_len`` before tokenising, freezing BERT's layers 0-8 (``--bert_freeze part``), BERT's own
learning rate, orthogonal initialisation of the GRUs' ``weight_hh`` and value clipping of the
gradients.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from alignkit_models.models.base import clean_reference_state_dict, load_converted_state_dict
from alignkit_models.models.cubemlp import CubeMLP

REFERENCE_OPTIONS: dict[str, Any] = {
    "linear_modalities": ("text",),
    "shared_time_axis": "text",
    "padded_steps": "encoded",
    "long_sequences": "truncate",
    "norm_position": "first",
    "norm_eps": 1e-6,
    "unit_bias": True,
    "hidden_dropout": False,
    "residual_projection": "always",
    "sequence_pooling": "mean",
    "modality_pooling": "concat",
    "dropout": 0.1,
    "regression_loss": "l1",
}
"""The structure of the code, and its README MOSI run (``--ln_first --bias --res_project 1-1
--features_compose_t mean --features_compose_k cat``, dropouts 0.1, the default ``--loss MAE``)
for what the weights do not fix."""
MODALITIES = ("text", "audio", "vision")
"""The code's cube order ``[t, a, v]``, in our names."""

_GRU_OWNERS = {"rnn_a": "audio", "rnn_v": "vision"}
_NORM_OWNERS = {"ln_a": "audio", "ln_v": "vision"}
_AXES = {"l": 0, "k": 1, "d": 2}
_GRU_PARAMETER = re.compile(r"(weight|bias)_(ih|hh)_l[01](_reverse)?")
_BLOCK = re.compile(r"mlp_encoder\.layers_stack\.(\d+)\.(.+)")
_BLOCK_PART = re.compile(r"(?:mlp_([lkd])\.(fc1|fc2)|ln_([lkd])|res_projection_([lkd]))\.(weight|bias)")
_CLASSIFIER = re.compile(r"classifier\.([03])\.(weight|bias)")


def _unexpected(key: str) -> ValueError:
    return ValueError(f"state_dict: unexpected parameter {key!r}; is this a state_dict of CubeMLP's released code (encoders 'gru')?")


def _tensor(state: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in state:
        raise ValueError(f"state_dict: missing {key!r}; is this a state_dict of CubeMLP's released code?")
    return state[key]


def _block_part(part: str, key: str) -> str:
    """A name inside ``MLPsBlock`` -> ours inside ``CubeBlock``."""
    m = _BLOCK_PART.fullmatch(part)
    if m is None:
        raise _unexpected(key)
    mlp_axis, layer, norm_axis, residual_axis, kind = m.groups()
    if mlp_axis is not None:
        return f"units.{_AXES[mlp_axis]}.mlp.{0 if layer == 'fc1' else 3}.{kind}"
    if norm_axis is not None:
        return f"units.{_AXES[norm_axis]}.norm.{kind}"
    if kind == "bias":  # their residual projections have no bias
        raise _unexpected(key)
    return f"units.{_AXES[residual_axis]}.residual.weight"


def convert_reference_state_dict(state_dict: Mapping[str, Any], *, bert: bool = True) -> dict[str, Tensor]:
    """The code's ``Model`` ``state_dict`` (or a dict of its gradients) in :class:`CubeMLP`'s names.

    Args:
        state_dict: ``Model.state_dict()``, its named parameters, or any subset of them.
        bert: keep BERT's weights as ``text_encoder.bert.*`` (for a model built with
            ``text_encoder``); False drops them (the text is then BERT's output).

    Returns:
        ``{our name: tensor}``; tensors are passed through unchanged.

    Raises:
        ValueError: a key the code's ``Model`` (with GRU encoders) does not have, naming it.
    """
    state = clean_reference_state_dict(state_dict)
    wide_head = any(key.startswith("classifier.3.") for key in state)
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        owner, _, part = key.partition(".")
        if owner == "bertmodel" and part:
            if bert and not part.startswith("pooler."):
                converted[f"text_encoder.bert.{part}"] = value
        elif key == "W_t.weight":
            converted["encoders.text.weight"] = value
        elif owner in _GRU_OWNERS and _GRU_PARAMETER.fullmatch(part):
            converted[f"encoders.{_GRU_OWNERS[owner]}.gru.{part}"] = value
        elif owner in _NORM_OWNERS and part in ("weight", "bias"):
            converted[f"encoders.{_NORM_OWNERS[owner]}.norm.{part}"] = value
        elif m := _BLOCK.fullmatch(key):
            converted[f"blocks.{m.group(1)}.{_block_part(m.group(2), key)}"] = value
        elif m := _CLASSIFIER.fullmatch(key):
            index, kind = m.groups()
            converted[f"head.{index}.{kind}" if wide_head else f"head.{kind}"] = value
        else:
            raise _unexpected(key)
    return converted


def _block_count(state: Mapping[str, Tensor]) -> int:
    return max((int(m.group(1)) + 1 for key in state if (m := _BLOCK.fullmatch(key))), default=0)


def _pooled_width(outs: tuple[int, int, int], sequence: str, modality: str) -> int:
    length, k, width = outs
    return width * (length if sequence == "concat" else 1) * (k if modality == "concat" else 1)


def infer_options(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Model arguments read from the code's ``Model`` ``state_dict``.

    Returns:
        ``input_dims`` (text = ``W_t``'s input width, i.e. BERT's hidden size), ``channels``,
        ``time_len``, ``blocks`` ((sequence, channel) pairs while the modality axis stays 3,
        else triples), ``block_hiddens`` (only where ``d_hiddens`` differ from ``d_outs``),
        ``residual_projection``, ``unit_bias``, ``norm_position`` (only where some axis changes
        size, else the LayerNorm widths cannot tell), the task (one output: regression), and
        ``sequence_pooling`` / ``modality_pooling`` when the README's (mean, concat) does not fit
        the head and exactly one other choice does.

    Raises:
        ValueError: a key the options are read from is missing or misshapen, or the head's
            width fits no pooling.
    """
    state = clean_reference_state_dict(state_dict)
    text = _tensor(state, "W_t.weight")
    channels = int(text.shape[0])
    input_dims = {"text": int(text.shape[1])}
    for owner, modality in _GRU_OWNERS.items():
        weight = _tensor(state, f"{owner}.weight_ih_l0")
        if weight.ndim != 2 or weight.shape[0] != 3 * channels:
            raise ValueError(
                f"state_dict[{owner + '.weight_ih_l0'!r}]: expected a GRU's ({3 * channels}, d_in), received {tuple(weight.shape)}; "
                "only the code's 'gru' encoders are supported"
            )
        input_dims[modality] = int(weight.shape[1])
    n_blocks = _block_count(state)
    if n_blocks == 0:
        raise ValueError("state_dict: missing 'mlp_encoder.layers_stack.0.*'; is this a state_dict of CubeMLP's released code?")
    sizes = [(int(_tensor(state, "mlp_encoder.layers_stack.0.mlp_l.fc1.weight").shape[1]), len(MODALITIES), channels)]
    hiddens, residuals, norm_position = [], [], None
    for i in range(n_blocks):
        prefix = f"mlp_encoder.layers_stack.{i}."
        outs = tuple(int(_tensor(state, f"{prefix}mlp_{x}.fc2.weight").shape[0]) for x in _AXES)
        hiddens.append(tuple(int(_tensor(state, f"{prefix}mlp_{x}.fc1.weight").shape[0]) for x in _AXES))
        residuals.append("always" if f"{prefix}res_projection_l.weight" in state else "resized")
        for j, x in enumerate(_AXES):
            width = int(_tensor(state, f"{prefix}ln_{x}.weight").shape[0])
            if sizes[-1][j] != outs[j]:
                norm_position = "first" if width == sizes[-1][j] else "last"
        sizes.append(outs)  # type: ignore[arg-type]
    keeps_modalities = all(out[1] == len(MODALITIES) for out in sizes[1:])
    options: dict[str, Any] = {
        "input_dims": input_dims,
        "channels": channels,
        "time_len": sizes[0][0],
        "blocks": tuple((out[0], out[2]) if keeps_modalities else out for out in sizes[1:]),
        "residual_projection": residuals[0] if len(set(residuals)) == 1 else tuple(residuals),
        "unit_bias": "mlp_encoder.layers_stack.0.mlp_l.fc1.bias" in state,
    }
    if any(hidden != out for hidden, out in zip(hiddens, sizes[1:], strict=True)):
        options["block_hiddens"] = tuple(hiddens)
    if norm_position is not None:
        options["norm_position"] = norm_position
    last = "classifier.3.weight" if "classifier.3.weight" in state else "classifier.0.weight"
    n_outputs = int(_tensor(state, last).shape[0])
    if n_outputs > 1:
        options.update(task="classification", n_classes=n_outputs)
    pooled = int(_tensor(state, "classifier.0.weight").shape[1])
    readme = (REFERENCE_OPTIONS["sequence_pooling"], REFERENCE_OPTIONS["modality_pooling"])
    fitting = [(s, k) for s in ("mean", "concat") for k in ("concat", "mean") if _pooled_width(sizes[-1], s, k) == pooled]
    if not fitting:
        raise ValueError(f"state_dict['classifier.0.weight']: its {pooled} inputs fit no pooling of the last cube {sizes[-1]}")
    if readme not in fitting and len(fitting) == 1:
        options["sequence_pooling"], options["modality_pooling"] = fitting[0]
    return options


def from_reference_state_dict(state_dict: Mapping[str, Any], **options: Any) -> CubeMLP:
    """A :class:`CubeMLP` holding the weights of the code's ``Model``.

    Args:
        state_dict: ``Model.state_dict()``; a ``"module."`` prefix is removed.
        **options: model options over :data:`REFERENCE_OPTIONS`. ``text_encoder=PATH`` (a BERT
            folder of their ``bertmodel``'s configuration) takes BERT's weights from
            ``state_dict`` and the text as token ids (``input_dims["text"]`` becomes 3);
            without it the text is BERT's last hidden state. Sizes read from the weights
            (:func:`infer_options`) must agree when given.

    Returns:
        The model, in training mode like a new ``nn.Module``; ``model.eval()(features, masks)``
        gives the code's predictions.

    Raises:
        ValueError: a key the code's modules do not have or one missing, options that
            disagree with the shapes, or a head that fits no pooling (one line each).
    """
    inferred = infer_options(state_dict)
    if options.get("text_encoder") is not None:
        inferred["input_dims"] = {**inferred["input_dims"], "text": 3}
    clashes = sorted(k for k in set(inferred) & set(options) if options[k] != inferred[k])
    if clashes:
        raise ValueError(f"{clashes[0]}: the state_dict has {inferred[clashes[0]]!r}, received {options[clashes[0]]!r}")
    settings = {**REFERENCE_OPTIONS, **inferred, **options}
    model = CubeMLP(**settings)
    converted = convert_reference_state_dict(state_dict, bert=settings.get("text_encoder") is not None)
    load_converted_state_dict(model, converted)
    return model
