"""Transformer encoder and decoder built from our own pre-norm blocks.

The blocks follow GPT-2 / nanoGPT (pre-norm residual blocks, Radford et al.
2019; Xiong et al. 2020, "On Layer Normalization in the Transformer
Architecture") with attention through ``F.scaled_dot_product_attention``.

The encoder reads the whole sentence (padding masked out) and pools its states
into the feature vector for q(z|x). The decoder is causal and reads z as
(a) a projection added to every input embedding and/or (b) memory vectors that
every layer attends to, as Optimus does (Li et al. 2020). Its state is a
key/value cache, so generation costs one position per new token.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import TextVAEError
from .dropout import Dropout

State = dict[str, Any]


def sinusoidal_positions(positions: Tensor, width: int) -> Tensor:
    """Fixed sinusoids (Vaswani et al. 2017, Sec. 3.5): positions (T,) -> (T, W)."""
    half = width // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device) / half)  # (W/2,)
    angles = positions.float().unsqueeze(1) * frequencies  # (T, W/2)
    table = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(table, (0, width - 2 * half))  # (T, W), odd widths get a zero column


class Embedder(nn.Module):
    """Token embeddings (``embed_dim``, projected to ``width`` if they differ)
    plus learned or sinusoidal positions, then dropout."""

    def __init__(self, config: ModelConfig, vocab_size: int, pad_id: int, width: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, config.embed_dim, padding_idx=pad_id)
        self.project = nn.Linear(config.embed_dim, width) if config.embed_dim != width else nn.Identity()
        self.kind, self.max_positions, self.width = config.positions, config.max_positions, width
        if self.kind == "learned":
            self.positions = nn.Embedding(config.max_positions, width)
        self.dropout = Dropout(config.dropout)

    def forward(self, tokens: Tensor, offset: int = 0, extra: Optional[Tensor] = None) -> Tensor:
        """tokens (B, T) at positions offset.., plus ``extra`` (B, W) on every one -> (B, T, W)."""
        length = tokens.shape[1]
        if self.kind == "learned" and offset + length > self.max_positions:
            raise TextVAEError(f"a sequence of {offset + length} tokens exceeds model.max_positions="
                               f"{self.max_positions}; raise it (or use model.positions=sinusoidal) and retrain")
        where = torch.arange(offset, offset + length, device=tokens.device)
        positions = self.positions(where) if self.kind == "learned" else sinusoidal_positions(where, self.width)
        x = self.project(self.tokens(tokens)) + positions  # (B, T, W)
        if extra is not None:
            x = x + extra.unsqueeze(1)
        return self.dropout(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention that can prepend cached keys and values."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise TextVAEError(f"the width {width} is not divisible by model.num_heads={heads}")
        self.heads, self.head_dim, self.dropout = heads, width // heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.residual_dropout = Dropout(dropout)

    def forward(self, x: Tensor, mask: Optional[Tensor], past: Optional[tuple[Tensor, Tensor]] = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, T, W); mask broadcastable to (B, heads, T, S), True = may attend;
        past: keys and values (B, heads, P, hd) that come before x's own (S = P + T).
        Returns (B, T, W) and all S keys and values."""
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if past is not None:
            k, v = torch.cat([past[0].to(k.dtype), k], dim=2), torch.cat([past[1].to(v.dtype), v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, h, T, hd)
        y = y.transpose(1, 2).reshape(batch, length, width)
        return self.residual_dropout(self.out(y)), (k, v)


class Block(nn.Module):
    """Pre-norm block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = SelfAttention(width, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(width, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, width), Dropout(dropout))

    def forward(self, x: Tensor, mask: Optional[Tensor], past: Optional[tuple[Tensor, Tensor]] = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        attended, cache = self.attention(self.norm1(x), mask, past)
        x = x + attended
        return x + self.mlp(self.norm2(x)), cache


def init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases (the pad row stays zero)."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Embedding)):
            nn.init.normal_(sub.weight, std=0.02)
        if isinstance(sub, nn.Linear) and sub.bias is not None:
            nn.init.zeros_(sub.bias)
        if isinstance(sub, nn.Embedding) and sub.padding_idx is not None:
            with torch.no_grad():
                sub.weight[sub.padding_idx].zero_()


class Pooling(nn.Module):
    """Encoder states (B, T, W) and a mask of real tokens (B, T) -> features (B, W).

    ``mean`` averages the real tokens; ``first`` takes position 0 (bos, or
    BERT's [CLS]); ``attention`` lets a learned query attend over the real
    tokens (the attention pooling of Lin et al. 2017, "A Structured
    Self-attentive Sentence Embedding", with one query).
    """

    def __init__(self, kind: str, width: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "attention":
            self.query = nn.Parameter(torch.randn(width) * 0.02)
            self.key = nn.Linear(width, width)

    def forward(self, states: Tensor, mask: Tensor) -> Tensor:
        if self.kind == "first":
            return states[:, 0]
        if self.kind == "mean":
            weights = mask.to(states.dtype)
            return (states * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp_min(1.0)
        scores = self.key(states) @ self.query.to(states.dtype) / math.sqrt(states.shape[-1])  # (B, T)
        weights = scores.float().masked_fill(~mask, float("-inf")).softmax(-1).to(states.dtype)
        return (weights.unsqueeze(-1) * states).sum(1)


class TransformerEncoder(nn.Module):
    """Bidirectional Transformer over the framed sentence; padding is masked
    out of every attention and of the pooling, so it never changes features."""

    def __init__(self, config: ModelConfig, vocab_size: int, pad_id: int) -> None:
        super().__init__()
        width = config.encoder_width
        self.embed = Embedder(config, vocab_size, pad_id, width)
        self.blocks = nn.ModuleList(Block(width, config.num_heads, config.ffn_dim or 4 * width, config.dropout)
                                    for _ in range(config.encoder_layers))
        self.norm = nn.LayerNorm(width)
        self.pool = Pooling(config.pooling, width)
        self.output_dim = width
        init_weights(self)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """tokens (B, T) framed with bos/eos, lengths (B,) -> features (B, W)."""
        real = torch.arange(tokens.shape[1], device=tokens.device) < lengths.unsqueeze(1)  # (B, T)
        x = self.embed(tokens)
        for block in self.blocks:
            x, _ = block(x, real[:, None, None, :])  # keys of padding are masked for every query
        return self.pool(self.norm(x), real)


def causal_mask(new: int, past: int, device: torch.device) -> Optional[Tensor]:
    """(T, P + T) bool: query t sees every cached key and the new keys up to t.
    None for a single new position, which may see everything."""
    if new == 1:
        return None
    keys = torch.arange(past + new, device=device)
    return keys.unsqueeze(0) <= past + torch.arange(new, device=device).unsqueeze(1)


def select_batch(state: State, index: Tensor) -> State:
    """Reorder the batch dimension (dim 0) of every tensor in a state (beam search)."""
    def pick(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.index_select(0, index)
        if isinstance(value, (list, tuple)):
            return type(value)(pick(v) for v in value)
        return value

    return {key: pick(value) for key, value in state.items()}


class TransformerDecoder(nn.Module):
    """Causal Transformer language model conditioned on z.

    ``model.latent_injection`` picks how z enters (Li et al. 2020, "Optimus:
    Organizing Sentences via Pre-trained Modeling of a Latent Space"):
    - ``embedding``: W_e z is added to every input embedding;
    - ``memory``: W_m z gives ``model.memory_vectors`` extra keys and values
      per layer, placed before the sentence in each layer's cache, so every
      position of every layer can attend to z;
    - ``both``.
    With ``latent_dim=0`` it is a plain Transformer language model.

    The state is ``{"keys": [(B, h, S, hd)] * layers, "values": [...],
    "offset": tokens read so far, "latent": (B, W) for embedding injection}``.
    """

    def __init__(self, config: ModelConfig, vocab_size: int, pad_id: int) -> None:
        super().__init__()
        width, latent = config.hidden_dim, config.latent_dim
        self.width, self.heads, self.layers = width, config.num_heads, config.decoder_layers
        self.memory_vectors = config.memory_vectors
        self.embed = Embedder(config, vocab_size, pad_id, width)
        self.blocks = nn.ModuleList(Block(width, config.num_heads, config.ffn_dim or 4 * width, config.dropout)
                                    for _ in range(config.decoder_layers))
        self.norm = nn.LayerNorm(width)
        self.latent_in_embedding = latent > 0 and config.latent_injection in ("embedding", "both")
        self.latent_in_memory = latent > 0 and config.latent_injection in ("memory", "both")
        if self.latent_in_embedding:
            self.latent_to_embedding = nn.Linear(latent, width)
        if self.latent_in_memory:  # one key and one value per memory vector, layer and head
            self.latent_to_memory = nn.Linear(latent, self.layers * 2 * self.memory_vectors * width)
        self.output = nn.Linear(width, vocab_size)
        init_weights(self)
        if config.tie_embeddings:
            if config.embed_dim != width:
                raise TextVAEError("model.tie_embeddings needs model.embed_dim == model.hidden_dim")
            self.output.weight = self.embed.tokens.weight

    def initial_state(self, z: Optional[Tensor], batch_size: int) -> State:
        """The state before bos: each layer's cache holds only z's memory (or nothing)."""
        return latent_state(self, z, batch_size, self.heads, self.width // self.heads)

    def forward(self, inputs: Tensor, state: State) -> tuple[Tensor, State]:
        """inputs (B, T), the tokens after those already in ``state`` ->
        hidden states (B, T, W) and the state after them.

        Causal: position t sees the memory, the cache and inputs up to t, so
        padding after a sentence and later tokens never change its outputs.
        """
        x = self.embed(inputs, state["offset"], state.get("latent"))  # (B, T, W)
        past = state["keys"][0].shape[2]
        mask = causal_mask(inputs.shape[1], past, inputs.device)
        keys, values = [], []
        for block, k, v in zip(self.blocks, state["keys"], state["values"]):
            x, (k, v) = block(x, mask, (k, v))
            keys.append(k)
            values.append(v)
        new_state = dict(state, keys=keys, values=values, offset=state["offset"] + inputs.shape[1])
        return self.norm(x), new_state  # (B, T, W)

    @staticmethod
    def select_state(state: State, index: Tensor) -> State:
        """Reorder the batch of a state (beam search): index (B',) -> B' rows."""
        return select_batch(state, index)


def latent_state(decoder: nn.Module, z: Optional[Tensor], batch_size: int, heads: int, head_dim: int) -> State:
    """The state before bos of a decoder that reads z by memory and/or embedding
    (our Transformer decoder and the Hugging Face causal LMs): each layer's
    key/value cache starts with z's ``memory_vectors`` (Li et al. 2020,
    Optimus) or empty, and ``latent`` is the projection added to every input."""
    if decoder.latent_in_memory and z is not None:
        memory = decoder.latent_to_memory(z).view(-1, decoder.layers, 2, decoder.memory_vectors, heads, head_dim)
        memory = memory.permute(1, 2, 0, 4, 3, 5)  # (layers, 2, B, heads, M, hd)
        keys, values = list(memory[:, 0]), list(memory[:, 1])
    else:
        empty = decoder.output.weight.new_zeros(batch_size, heads, 0, head_dim)
        keys, values = [empty] * decoder.layers, [empty] * decoder.layers
    state: State = {"keys": keys, "values": values, "offset": 0}
    if decoder.latent_in_embedding and z is not None:
        state["latent"] = decoder.latent_to_embedding(z)  # (B, W)
    return state
