"""Hugging Face backbones: ``model.encoder=hf:PATH_OR_NAME`` (an encoder-only
model such as BERT) and ``model.decoder=hf:PATH_OR_NAME`` (a causal language
model such as GPT-2), in the manner of Optimus (Li et al. 2020).

A backbone reads token ids of the run's tokenizer, which must therefore be
the backbone's own (``check_tokenizer`` says so clearly otherwise); special
tokens the tokenizer had to add (GPT-2 has no pad or unk) get new embedding
rows. ``model.freeze_backbone`` freezes the backbone's weights; the z
projections always train.

Offline reloading: a run directory keeps each backbone's ``config.json`` in
``backbone_encoder/`` and ``backbone_decoder/``; given that folder the module
is built from the config alone (``from_config``) and the run's safetensors
supply every weight, so no network or original checkpoint is needed.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import TextVAEError
from .transformer import Pooling, State, latent_state, select_batch

PREFIX = "hf:"
BACKBONE_DIRS = {"encoder": "backbone_encoder", "decoder": "backbone_decoder"}


def backbone_name(name: str) -> str:
    """``hf:PATH_OR_NAME`` -> ``PATH_OR_NAME`` (an error when it is empty)."""
    path = name[len(PREFIX):].strip()
    if not path:
        raise TextVAEError(f"{name!r} names no backbone: use hf:PATH_OR_NAME, e.g. hf:gpt2")
    return path


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_backbone(name: str, role: str, auto_class: str, saved_config: Optional[Path]) -> nn.Module:
    """The transformers model ``name`` through ``transformers.<auto_class>``:
    pretrained weights, or, when ``saved_config`` holds a ``config.json``, the
    bare architecture (its weights come from the run's safetensors)."""
    import transformers
    from transformers.utils import logging as hf_logging

    from ..hub import local_only

    factory = getattr(transformers, auto_class)
    saved = saved_config is not None and (saved_config / "config.json").exists()
    offline = not saved and local_only(name)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of our logs
    try:
        if saved:
            config = transformers.AutoConfig.from_pretrained(saved_config)
            return factory.from_config(config, dtype=torch.float32)  # float32 weights; bf16 comes from autocast
        return factory.from_pretrained(name, dtype=torch.float32, local_files_only=offline)
    except (OSError, ValueError, KeyError) as error:
        if offline:
            raise TextVAEError(f"cannot load model.{role}=hf:{name}: not a local folder, not in the local Hugging "
                               "Face cache, and the hub cannot be reached (offline?)") from None
        where = "the folder" if Path(name).is_dir() else "the hub (offline? give a local folder)"
        raise TextVAEError(f"cannot load model.{role}=hf:{name} with {auto_class} from {where}: "
                           f"{_first_line(error)}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()


class Backbone(nn.Module):
    """What the encoder and decoder share: loading, vocabulary fit, freezing."""

    backbone: nn.Module

    def _setup(self, config: ModelConfig, role: str, auto_class: str, vocab_size: int,
               saved_dir: Optional[Path]) -> None:
        self.role = role
        self.name = backbone_name(getattr(config, role))
        saved = saved_dir / BACKBONE_DIRS[role] if saved_dir is not None else None
        self.backbone = load_backbone(self.name, role, auto_class, saved)
        self.native_vocab = self.backbone.get_input_embeddings().num_embeddings
        if vocab_size < self.native_vocab:
            raise TextVAEError(self._mismatch(f"the tokenizer has {vocab_size:,} tokens and the backbone "
                                              f"{self.native_vocab:,}"))
        if vocab_size > self.native_vocab:  # the special tokens our Tokenizer added (pad/unk for GPT-2)
            self.backbone.resize_token_embeddings(vocab_size)
        if config.freeze_backbone:
            self.backbone.requires_grad_(False)

    def _mismatch(self, detail: str) -> str:
        return (f"model.{self.role}=hf:{self.name} needs the backbone's own tokenizer ({detail}); "
                f"train with --tokenizer {self.name}")

    def check_tokenizer(self, tokenizer) -> None:
        """Raise unless ``tokenizer`` maps every backbone token to the backbone's
        id: tokens beyond the backbone's vocabulary may only be the added
        specials, and where the backbone folder has its own tokenizer.json,
        every one of its entries must agree."""
        backend = tokenizer.backend
        specials = set(tokenizer.specials.values())
        extra = [backend.id_to_token(i) for i in range(self.native_vocab, tokenizer.vocab_size)]
        strangers = [token for token in extra if token not in specials]
        if strangers:
            raise TextVAEError(self._mismatch(f"ids from {self.native_vocab:,} on are ordinary tokens such as "
                                              f"{strangers[0]!r}"))
        reference = self._own_tokenizer_file()
        if reference is not None:
            from tokenizers import Tokenizer as Backend

            own = Backend.from_file(str(reference)).get_vocab(with_added_tokens=True)
            ours = backend.get_vocab(with_added_tokens=True)
            wrong = [token for token, index in own.items() if ours.get(token) != index]
            if wrong:
                raise TextVAEError(self._mismatch(f"{len(wrong):,} tokens have other ids, e.g. {wrong[0]!r}"))

    def _own_tokenizer_file(self) -> Optional[Path]:
        """The backbone's tokenizer.json, in its folder or the local hub cache (never downloaded)."""
        local = Path(self.name) / "tokenizer.json"
        if local.is_file():
            return local
        if Path(self.name).exists():
            return None
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(self.name, "tokenizer.json")
        except Exception:  # a name that is not a valid repo id
            return None
        return Path(cached) if isinstance(cached, str) else None

    def save_backbone_config(self, run_dir: Path) -> None:
        """Write the backbone's config (vocabulary size after resizing included)."""
        self.backbone.config.save_pretrained(run_dir / BACKBONE_DIRS[self.role])


class HFEncoder(Backbone):
    """An encoder-only backbone (BERT-like) pooled as ``model.pooling`` says:
    ``first`` is BERT's [CLS] (the tokenizer's bos), ``mean`` averages the real
    tokens, ``attention`` uses a learned query. (A causal backbone used as the
    encoder sees only bos at its first position: pool it by mean or attention.)"""

    def __init__(self, config: ModelConfig, vocab_size: int, pad_id: int, saved_dir: Optional[Path] = None) -> None:
        super().__init__()
        self._setup(config, "encoder", "AutoModel", vocab_size, saved_dir)
        if isinstance(getattr(self.backbone, "pooler", None), nn.Module):
            self.backbone.pooler = None  # BERT's own [CLS] pooler: unused weights (and unused DDP parameters)
        self.output_dim = self.backbone.config.hidden_size
        self.pool = Pooling(config.pooling, self.output_dim)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """tokens (B, T) framed with bos/eos ([CLS]/[SEP] for BERT), lengths (B,) -> (B, F)."""
        real = torch.arange(tokens.shape[1], device=tokens.device) < lengths.unsqueeze(1)  # (B, T)
        states = self.backbone(input_ids=tokens, attention_mask=real.long()).last_hidden_state  # (B, T, F)
        return self.pool(states, real)


class HFDecoder(Backbone):
    """A causal-LM backbone (GPT-2-like) conditioned on z as Optimus does
    (Li et al. 2020), per ``model.latent_injection``:
    - ``embedding``: W_e z is added to every input embedding (``inputs_embeds``);
    - ``memory``: W_m z gives each layer ``model.memory_vectors`` keys and
      values per head, passed as a prefix of the backbone's key/value cache;
    - ``both``.
    Positions start at 0 at bos, as in pretraining: the memory has none.
    ``output`` is the backbone's own LM head. The state has the same layout as
    the TransformerDecoder's: per-layer keys and values, offset, latent.
    """

    def __init__(self, config: ModelConfig, vocab_size: int, pad_id: int, saved_dir: Optional[Path] = None) -> None:
        super().__init__()
        self._setup(config, "decoder", "AutoModelForCausalLM", vocab_size, saved_dir)
        backbone_config = self.backbone.config
        width = backbone_config.hidden_size
        heads = backbone_config.num_attention_heads
        self.layers = backbone_config.num_hidden_layers
        self.kv_heads = getattr(backbone_config, "num_key_value_heads", None) or heads
        self.head_dim = getattr(backbone_config, "head_dim", None) or width // heads
        self.memory_vectors = config.memory_vectors
        # transformers 5 renamed ``past_key_values`` to ``cache`` (the old name is deprecated)
        parameters = inspect.signature(self.backbone.base_model.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        latent = config.latent_dim
        self.latent_in_embedding = latent > 0 and config.latent_injection in ("embedding", "both")
        self.latent_in_memory = latent > 0 and config.latent_injection in ("memory", "both")
        if self.latent_in_embedding:
            self.latent_to_embedding = nn.Linear(latent, width)
        if self.latent_in_memory:
            self.latent_to_memory = nn.Linear(latent, self.layers * 2 * self.memory_vectors * self.kv_heads
                                              * self.head_dim)

    @property
    def output(self) -> nn.Module:
        """The backbone's LM head, hidden (..., W) -> logits (..., V)."""
        return self.backbone.get_output_embeddings()

    def initial_state(self, z: Optional[Tensor], batch_size: int) -> State:
        return latent_state(self, z, batch_size, self.kv_heads, self.head_dim)

    def forward(self, inputs: Tensor, state: State) -> tuple[Tensor, State]:
        """inputs (B, T) after the tokens in ``state`` -> hidden (B, T, W) and the new state.

        A fresh ``DynamicCache`` is filled from the state each call, so a
        state is never changed in place (beam search may reuse it)."""
        from transformers import DynamicCache

        embedded = self.backbone.get_input_embeddings()(inputs)  # (B, T, W)
        if "latent" in state:
            embedded = embedded + state["latent"].to(embedded.dtype).unsqueeze(1)
        cache = DynamicCache(config=self.backbone.config)
        for layer, (k, v) in enumerate(zip(state["keys"], state["values"])):
            cache.update(k, v, layer)
        offset = state["offset"]
        positions = torch.arange(offset, offset + inputs.shape[1], device=inputs.device).unsqueeze(0)
        arguments: dict[str, Any] = {self.cache_argument: cache}
        body = self.backbone.base_model  # the stack without the LM head
        out = body(inputs_embeds=embedded, position_ids=positions, use_cache=True, **arguments)
        keys = [cache.layers[i].keys for i in range(self.layers)]
        values = [cache.layers[i].values for i in range(self.layers)]
        return out.last_hidden_state, dict(state, keys=keys, values=values, offset=offset + inputs.shape[1])

    @staticmethod
    def select_state(state: State, index: Tensor) -> State:
        return select_batch(state, index)
