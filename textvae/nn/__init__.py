"""Encoders and decoders, one plain dict per choice.

``model.encoder`` / ``model.decoder`` name a key of ``ENCODERS`` / ``DECODERS``,
or ``hf:PATH_OR_NAME`` for a Hugging Face backbone. Config validation and the
CLI read these same dicts.
"""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from ..errors import TextVAEError
from .lstm import LSTMDecoder, LSTMEncoder

ENCODERS: dict[str, type[nn.Module]] = {"lstm": LSTMEncoder}
DECODERS: dict[str, type[nn.Module]] = {"lstm": LSTMDecoder}


def _lookup(kind: str, name: str, table: dict[str, type[nn.Module]]) -> type[nn.Module]:
    if name not in table:
        choices = ", ".join([*table, "hf:PATH_OR_NAME"])
        raise TextVAEError(f"unknown {kind} {name!r} (choices: {choices})")
    return table[name]


def build_encoder(config: ModelConfig, vocab_size: int, pad_id: int) -> nn.Module:
    return _lookup("model.encoder", config.encoder, ENCODERS)(config, vocab_size, pad_id)


def build_decoder(config: ModelConfig, vocab_size: int, pad_id: int) -> nn.Module:
    return _lookup("model.decoder", config.decoder, DECODERS)(config, vocab_size, pad_id)


def check_names(config: ModelConfig) -> None:
    """Fail fast on an unknown encoder or decoder name."""
    _lookup("model.encoder", config.encoder, ENCODERS)
    _lookup("model.decoder", config.decoder, DECODERS)
