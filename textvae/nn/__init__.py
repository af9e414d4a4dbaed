"""Encoders and decoders, one plain dict per choice.

``model.encoder`` / ``model.decoder`` name a key of ``ENCODERS`` / ``DECODERS``,
or ``hf:PATH_OR_NAME`` for a Hugging Face backbone (``hf.py``). Config
validation and the CLI read these same dicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from torch import nn

from ..config import ModelConfig
from ..errors import TextVAEError
from .hf import PREFIX as HF_PREFIX
from .hf import HFDecoder, HFEncoder, backbone_name
from .lstm import LSTMDecoder, LSTMEncoder
from .transformer import TransformerDecoder, TransformerEncoder

ENCODERS: dict[str, type[nn.Module]] = {"lstm": LSTMEncoder, "transformer": TransformerEncoder}
DECODERS: dict[str, type[nn.Module]] = {"lstm": LSTMDecoder, "transformer": TransformerDecoder}
HF_CLASSES: dict[str, type[nn.Module]] = {"model.encoder": HFEncoder, "model.decoder": HFDecoder}


def _lookup(kind: str, name: str, table: dict[str, type[nn.Module]]) -> type[nn.Module]:
    if name.startswith(HF_PREFIX):
        backbone_name(name)  # an empty path fails here
        return HF_CLASSES[kind]
    if name not in table:
        choices = ", ".join([*table, "hf:PATH_OR_NAME"])
        raise TextVAEError(f"unknown {kind} {name!r} (choices: {choices})")
    return table[name]


def _build(kind: str, name: str, table: dict[str, type[nn.Module]], config: ModelConfig, vocab_size: int,
           pad_id: int, saved_dir: Optional[Path]) -> nn.Module:
    cls = _lookup(kind, name, table)
    if name.startswith(HF_PREFIX):  # a saved run rebuilds its backbone from the config it kept
        return cls(config, vocab_size, pad_id, saved_dir=saved_dir)
    return cls(config, vocab_size, pad_id)


def build_encoder(config: ModelConfig, vocab_size: int, pad_id: int, saved_dir: Optional[Path] = None) -> nn.Module:
    return _build("model.encoder", config.encoder, ENCODERS, config, vocab_size, pad_id, saved_dir)


def build_decoder(config: ModelConfig, vocab_size: int, pad_id: int, saved_dir: Optional[Path] = None) -> nn.Module:
    return _build("model.decoder", config.decoder, DECODERS, config, vocab_size, pad_id, saved_dir)


def check_names(config: ModelConfig) -> None:
    """Fail fast on an unknown encoder or decoder name."""
    _lookup("model.encoder", config.encoder, ENCODERS)
    _lookup("model.decoder", config.decoder, DECODERS)
