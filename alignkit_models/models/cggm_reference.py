"""Load the weights of CGGM's released code (zrguo/CGGM, NeurIPS 2024) into the zoo's :class:`CGGM`.

The authors' MOSI model is ``MSAModel`` (``models/msamodel.py``): per modality ``i`` a 1x1
``Conv1d`` projection and a MulT ``TransformerEncoder`` (``modules/transformer.py``), a fusion
``TransformerEncoder`` over the encoder outputs concatenated along time, and MulT's residual
head. Its guidance classifiers live in a separate ``ClassifierGuided`` module with its own
``state_dict``. The modalities are indexed in the order of the data (text, audio, vision on
MOSI). Their parameters map onto ours as::

    MSAModel                                    ours
    proj.<i>.weight (d, d_i, 1), .bias          projections.<m>.weight (d, d_i), .bias
    encoders.<i>.<encoder part>                 encoders.<m>.<our part>
    fusion.<encoder part>                       fusion.<our part>
    proj1.*, proj2.*, out_layer.*               head.proj1.*, head.proj2.*, head.out.*

    ClassifierGuided
    classifers.<i>.bone.<encoder part>          classifiers.<m>.encoder.<our part>
    classifers.<i>.proj1.*                      classifiers.<m>.hidden.0.*
    classifers.<i>.out_layer.*                  classifiers.<m>.out.*

with, inside every encoder, the names of
:data:`~alignkit_models.layers.transformer.MULT_LAYER_NAMES` under ``layers.<k>.`` and
``layer_norm.*`` -> ``norm.*``. The fairseq constants ``version`` and
``embed_positions._float_tensor`` (buffers) are dropped when present, so a dict of parameters
alone converts as well.

Widths, layer counts and the output size are read from the shapes; the head count is not in the
weights. :data:`REFERENCE_OPTIONS` restores what the code does differently from our defaults,
and the hyper-parameters of its MOSI run (``run/mosi_run.py``) that the weights do not fix. In
eval mode the converted model's ``prediction`` is the code's ``MSAModel(x)[0]`` (squeezed for
regression), on padded batches too. In training (``ClassifierGuided`` weights given, dropout
off, the same sequence of batches), each ``model.loss(output, labels).total.backward()`` gives
every parameter, classifiers included, the gradient the code's training loop
(``src/msatrain.py``) gives it before clipping: modulation from the accuracy memory and the
one-step-late direction term included.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from alignkit_models.layers.transformer import MULT_LAYER_NAMES
from alignkit_models.models.base import clean_reference_state_dict
from alignkit_models.models.cggm import CGGM

REFERENCE_OPTIONS: dict[str, Any] = {
    "n_heads": 5,
    "attn_dropout": 0.15,
    "relu_dropout": 0.15,
    "embed_dropout": 0.2,
    "res_dropout": 0.1,
    "out_dropout": 0.1,
    "rho": 1.3,
    "direction_weight": 0.2,
    "direction": "weight",
    "direction_step": "next",
    "modulate_projections": False,
    "classifier_hidden_twice": True,
    "position_table": "fairseq",
    "padding": "included",
    "regression_loss": "l1",
}
"""The code's MOSI run (``run/mosi_run.py``: 5 heads, dropouts 0.15 / 0.15 / 0.2 / 0.1 / 0.1,
``rou`` 1.3, ``lamda`` 0.2, ``L1Loss``) and the structure of its code, for what the weights do
not fix."""
MODALITIES = ("text", "audio", "vision")
"""The order of the code's MOSI inputs (``[text, audio, vision]``)."""
_FAIRSEQ_CONSTANTS = ("version", "embed_positions._float_tensor")
_HEAD = {"proj1": "head.proj1", "proj2": "head.proj2", "out_layer": "head.out"}
_INDEXED = re.compile(r"(proj|encoders)\.(\d+)\.(.+)")
_CLASSIFIER = re.compile(r"classifers\.(\d+)\.(bone|proj1|out_layer)\.(.+)")
_LAYER = re.compile(r"layers\.(\d+)\.(.+)")


def _encoder_part(part: str, key: str) -> str | None:
    """A name inside a fairseq ``TransformerEncoder`` -> ours inside ``CrossModalEncoder`` (None: dropped)."""
    if part in _FAIRSEQ_CONSTANTS:
        return None
    if part in ("layer_norm.weight", "layer_norm.bias"):
        return "norm." + part.split(".")[1]
    if (m := _LAYER.fullmatch(part)) and m.group(2) in MULT_LAYER_NAMES:
        return f"layers.{m.group(1)}.{MULT_LAYER_NAMES[m.group(2)]}"
    raise ValueError(f"state_dict: unexpected parameter {key!r}; is this a state_dict of CGGM's released code?")


def _modality(index: str, modalities: Sequence[str], key: str) -> str:
    if int(index) >= len(modalities):
        raise ValueError(f"state_dict: {key!r} is for modality {index}, but the model has {len(modalities)} ({list(modalities)})")
    return modalities[int(index)]


def _layer_count(state: Mapping[str, Tensor], prefix: str) -> int:
    """Layers of the encoder whose keys start with ``prefix`` (``"encoders.0."``), counted in the keys."""
    pattern = re.compile(re.escape(prefix) + r"layers\.(\d+)\.")
    return max((int(m.group(1)) + 1 for key in state if (m := pattern.match(key))), default=0)


def _tensor(state: Mapping[str, Tensor], key: str, name: str = "state_dict") -> Tensor:
    if key not in state:
        raise ValueError(f"{name}: missing {key!r}; is this a state_dict of CGGM's released code?")
    return state[key]


def infer_options(
    state_dict: Mapping[str, Any],
    classifier_state_dict: Mapping[str, Any] | None = None,
    modalities: Sequence[str] = MODALITIES,
) -> dict[str, Any]:
    """Model arguments read from the shapes: ``input_dims`` (named by ``modalities``, in the
    code's input order), ``dim``, ``n_layers``, ``fusion_layers``, ``classifier_layers`` (from the
    classifiers' weights, when given) and the task (one output: regression)."""
    state = clean_reference_state_dict(state_dict, "state_dict")
    input_dims: dict[str, int] = {}
    for i, modality in enumerate(modalities):
        weight = _tensor(state, f"proj.{i}.weight")
        if weight.ndim != 3 or weight.shape[2] != 1:
            raise ValueError(f"state_dict['proj.{i}.weight']: expected shape (d, d_in, 1), received {tuple(weight.shape)}")
        input_dims[modality] = int(weight.shape[1])
    if f"proj.{len(modalities)}.weight" in state:
        raise ValueError(f"modalities: the state_dict has more than {len(modalities)} modalities, received {list(modalities)}")
    n_outputs = int(_tensor(state, "out_layer.weight").shape[0])
    options: dict[str, Any] = {
        "input_dims": input_dims,
        "dim": int(state["proj.0.weight"].shape[0]),
        "n_layers": _layer_count(state, "encoders.0."),
        "fusion_layers": _layer_count(state, "fusion."),
    }
    if classifier_state_dict is not None:
        options["classifier_layers"] = _layer_count(clean_reference_state_dict(classifier_state_dict, "classifier_state_dict"), "classifers.0.bone.")
    if n_outputs > 1:
        options.update(task="classification", n_classes=n_outputs)
    return options


def convert_reference_state_dict(
    state_dict: Mapping[str, Any],
    model: CGGM,
    classifier_state_dict: Mapping[str, Any] | None = None,
) -> dict[str, Tensor]:
    """The code's ``MSAModel`` (and ``ClassifierGuided``) ``state_dict`` in ``model``'s names.

    Args:
        state_dict: ``MSAModel.state_dict()`` (or its named parameters).
        model: the :class:`CGGM` the result is for; its modality order is the code's input order.
        classifier_state_dict: ``ClassifierGuided.state_dict()``, or None to leave the
            classifiers out of the result.

    Returns:
        ``{our name: tensor}``; the projections' ``(d, d_i, 1)`` kernels become ``(d, d_i)``.

    Raises:
        ValueError: a key the code's modules do not have, naming it.
    """
    modalities = model.modalities
    converted: dict[str, Tensor] = {}
    for key, value in clean_reference_state_dict(state_dict, "state_dict").items():
        if m := _INDEXED.fullmatch(key):
            kind, index, part = m.groups()
            modality = _modality(index, modalities, key)
            if kind == "proj" and part in ("weight", "bias"):
                converted[f"projections.{modality}.{part}"] = value.squeeze(-1) if part == "weight" else value
            elif kind == "encoders" and (ours := _encoder_part(part, key)) is not None:
                converted[f"encoders.{modality}.{ours}"] = value
            elif kind == "proj":
                raise ValueError(f"state_dict: unexpected parameter {key!r}; is this a state_dict of CGGM's released code?")
        elif key.startswith("fusion."):
            if (ours := _encoder_part(key.removeprefix("fusion."), key)) is not None:
                converted[f"fusion.{ours}"] = value
        elif (head := key.rsplit(".", 1))[0] in _HEAD and head[1] in ("weight", "bias"):
            converted[f"{_HEAD[head[0]]}.{head[1]}"] = value
        else:
            raise ValueError(f"state_dict: unexpected parameter {key!r}; is this a state_dict of CGGM's released code?")
    if classifier_state_dict is None:
        return converted
    for key, value in clean_reference_state_dict(classifier_state_dict, "classifier_state_dict").items():
        if not (m := _CLASSIFIER.fullmatch(key)):
            raise ValueError(f"classifier_state_dict: unexpected parameter {key!r}; is this CGGM's ClassifierGuided?")
        index, module, part = m.groups()
        prefix = f"classifiers.{_modality(index, modalities, key)}"
        if module == "bone":
            if (ours := _encoder_part(part, key)) is not None:
                converted[f"{prefix}.encoder.{ours}"] = value
        elif part in ("weight", "bias"):
            converted[f"{prefix}.{'hidden.0' if module == 'proj1' else 'out'}.{part}"] = value
        else:
            raise ValueError(f"classifier_state_dict: unexpected parameter {key!r}; is this CGGM's ClassifierGuided?")
    return converted


def from_reference_state_dict(
    state_dict: Mapping[str, Any],
    classifier_state_dict: Mapping[str, Any] | None = None,
    *,
    modalities: Sequence[str] = MODALITIES,
    **options: Any,
) -> CGGM:
    """A :class:`CGGM` holding the weights of the code's ``MSAModel`` (and ``ClassifierGuided``).

    Args:
        state_dict: ``MSAModel.state_dict()``; a ``"module."`` prefix is removed.
        classifier_state_dict: ``ClassifierGuided.state_dict()``; None keeps our freshly
            initialised classifiers (they only matter in training).
        modalities: our names for the code's inputs, in its order.
        **options: model options over :data:`REFERENCE_OPTIONS`; widths, layer counts and the
            output size come from the shapes and must agree when given.

    Returns:
        The model, in training mode like a new ``nn.Module``; ``model.eval()(features)`` gives
        the code's predictions.

    Raises:
        ValueError: a key the code's modules do not have or one missing, or options that
            disagree with the shapes.
    """
    inferred = infer_options(state_dict, classifier_state_dict, modalities)
    clashes = sorted(k for k in set(inferred) & set(options) if options[k] != inferred[k])
    if clashes:
        raise ValueError(f"{clashes[0]}: the state_dict has {inferred[clashes[0]]!r}, received {options[clashes[0]]!r}")
    model = CGGM(**{**REFERENCE_OPTIONS, **inferred, **options})
    converted = convert_reference_state_dict(state_dict, model, classifier_state_dict)
    try:
        missing, unexpected = model.load_state_dict(converted, strict=False)
    except RuntimeError as error:  # shape mismatches: report the first one in one line
        detail = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error).splitlines()[0])
        raise ValueError(f"state_dict: does not fit the options given ({detail})") from None
    ours_only = ("previous_accuracy", "pending_direction_gradient")  # training state the code keeps in its loop
    missing = [k for k in missing if k not in ours_only and (classifier_state_dict is not None or not k.startswith("classifiers."))]
    problems = [f"missing {k!r}" for k in missing] + [f"unexpected {k!r}" for k in unexpected]
    if problems:
        raise ValueError(f"state_dict: does not match the model built from it ({'; '.join(problems[:3])})")
    return model
