"""A BERT encoder for text given as token ids, as the official DecAlign code fine-tunes it.

:class:`BertTextEncoder` runs a local Hugging Face BERT checkpoint on the int64 ``(B, L, 3)``
token arrays that ``load_mmsa(..., text="tokens")`` produces (token id, attention mask, segment
id per token) and returns one vector per token, or, with ``pooling``, one vector per text: the
first token's ([CLS], as Self-MM reads BERT) or the mean over the attention mask (as MISA does).
``transformers`` is optional (``pip install alignkit[text]``) and only imported when an encoder
is built.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["BertTextEncoder", "TextPooling"]

#: What :class:`BertTextEncoder` returns: every token's vector, the first token's, or the masked mean.
TextPooling = Literal["none", "first", "mean"]
_POOLINGS: tuple[str, ...] = ("none", "first", "mean")

_MISSING_TRANSFORMERS = "text_encoder: needs Hugging Face transformers; install alignkit[text]"
# Longest excerpt of a transformers error quoted in our own message.
_REASON_CHARS = 200


class BertTextEncoder(nn.Module):
    """BERT over token ids: ``(B, L, 3)`` int64 -> ``last_hidden_state`` ``(B, L, hidden_size)``,
    or ``(B, hidden_size)`` with ``pooling``.

    Args:
        path: a local folder written by ``save_pretrained`` (``config.json`` with
            ``model_type: "bert"`` and the weights), e.g. a downloaded ``bert-base-uncased``
            (MOSI, MOSEI) or ``bert-base-chinese`` (CH-SIMS). Nothing is downloaded.
        finetune: train BERT with the rest of the model (the official default). With False
            its parameters get ``requires_grad=False`` and it runs under :func:`torch.no_grad`.
        pooling: ``"none"`` (default) returns every token's vector ``(B, L, hidden_size)``;
            ``"first"`` the first token's, ``[CLS]``, ``(B, hidden_size)`` (Self-MM);
            ``"mean"`` the mean over the tokens whose attention mask is 1,
            ``sum_t m_t h_t / sum_t m_t``, ``(B, hidden_size)`` (MISA).

    Attributes:
        hidden_size: width of the returned vectors (768 for BERT-base).
        finetune, pooling: as given.
        bert: the ``transformers.BertModel``, loaded in float32. Its pooler is dropped: only
            ``last_hidden_state`` is used, and unused parameters would trouble
            ``DistributedDataParallel`` and weight decay.

    Dropout inside BERT follows the module's ``train()`` / ``eval()`` mode, as in the official
    code, also when ``finetune`` is False.

    Raises:
        ImportError: ``transformers`` is not installed.
        ValueError: ``path`` does not exist, or is not a BERT model folder (no ``config.json``,
            another model type, missing or unreadable weights); ``pooling`` is not one of
            ``"none"``, ``"first"``, ``"mean"``.
    """

    def __init__(self, path: str | os.PathLike[str], *, finetune: bool = True, pooling: TextPooling = "none") -> None:
        super().__init__()
        if pooling not in _POOLINGS:
            raise ValueError(f"pooling: expected one of {_POOLINGS}, received {pooling!r}")
        try:
            import transformers
        except ImportError:
            raise ImportError(_MISSING_TRANSFORMERS) from None
        folder = Path(path)
        _check_folder(folder)
        self.bert = _load_bert(transformers, folder)
        self.finetune = bool(finetune)
        self.pooling = pooling
        self.hidden_size = int(self.bert.config.hidden_size)
        if not self.finetune:
            self.bert.requires_grad_(False)

    def forward(self, tokens: Tensor) -> Tensor:
        """Encode token ids.

        Args:
            tokens: integer ``(B, L, 3)``: per token its id, attention mask (1 on real tokens, 0
                on padding) and segment id.

        Returns:
            float ``(B, L, hidden_size)``: BERT's last hidden state (padding positions included;
            mask them with ``tokens[..., 1]``); ``(B, hidden_size)`` with ``pooling``.
        """
        _check_tokens(tokens)
        tokens = tokens.long()
        inputs = {"input_ids": tokens[..., 0], "attention_mask": tokens[..., 1], "token_type_ids": tokens[..., 2]}
        if self.finetune:
            hidden = self.bert(**inputs).last_hidden_state
        else:
            with torch.no_grad():
                hidden = self.bert(**inputs).last_hidden_state
        return self._pool(hidden, tokens[..., 1])

    def _pool(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """``hidden (B, L, H)`` reduced as ``pooling`` says, with ``attention_mask (B, L)``."""
        if self.pooling == "first":
            return hidden[:, 0]
        if self.pooling == "mean":
            weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
            # A text without any real token (all-zero mask) gives 0, not 0 / 0.
            return (weights * hidden).sum(1) / weights.sum(1).clamp_min(1.0)
        return hidden


def _check_tokens(tokens: Any) -> None:
    if not isinstance(tokens, Tensor):
        raise ValueError(f"tokens: expected an integer tensor (B, L, 3), received {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise ValueError(
            f"tokens: expected an integer tensor (B, L, 3) of token ids, attention mask and segment ids, "
            f"received dtype {tokens.dtype}"
        )
    if tokens.ndim != 3 or tokens.shape[-1] != 3:
        raise ValueError(
            f"tokens: expected shape (B, L, 3) (token ids, attention mask, segment ids), received {tuple(tokens.shape)}"
        )


def _check_folder(folder: Path) -> None:
    if not folder.exists():
        raise ValueError(f"text_encoder: no such directory: {folder}")
    if not folder.is_dir():
        raise _not_bert(folder, "a file, not a folder")
    config = folder / "config.json"
    if not config.is_file():
        raise _not_bert(folder, "no config.json")
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _not_bert(folder, f"config.json is unreadable: {_first_line(error)}") from None
    if not isinstance(settings, dict):
        raise _not_bert(folder, "config.json does not hold a JSON object")
    # Old BERT configs may lack model_type; transformers then reads them as BERT too.
    model_type = settings.get("model_type", "bert")
    if model_type != "bert":
        raise _not_bert(folder, f"config.json has model_type {model_type!r}, expected 'bert'")


def _load_bert(transformers: Any, folder: Path) -> nn.Module:
    try:
        bert, info = transformers.BertModel.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
    except Exception as error:  # transformers raises OSError, SafetensorError, RuntimeError, ...
        raise _not_bert(folder, f"cannot load the weights: {_first_line(error)}") from None
    # transformers fills weights missing from the checkpoint with random values and only logs
    # it; a BERT with random layers is useless, so refuse. The pooler is dropped below anyway.
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if missing:
        raise _not_bert(folder, f"the weights lack {len(missing)} BERT tensors, e.g. {missing[0]}")
    bert.pooler = None
    return bert.float()


def _not_bert(folder: Path, reason: str) -> ValueError:
    return ValueError(f"text_encoder: {folder} is not a BERT model folder ({reason})")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."
