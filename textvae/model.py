"""TextVAE: encoder -> Gaussian q(z|x) -> autoregressive decoder p(x|z).

The model speaks in nats per sentence: ``forward`` returns per-sentence
reconstruction and KL terms (objectives.VAEOutput); ``posterior`` and
``log_likelihood`` are the small interface that the shared importance-weighted
NLL and latent statistics use (the MNIST model implements the same one).
With ``model.latent_dim=0`` it is the plain language-model baseline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from .builtin import resolve_run
from .config import Config
from .data import TextBatch, collate
from .errors import TextVAEError
from .latent import DiagonalGaussian, GaussianHead
from .nn import build_decoder, build_encoder, check_names
from .nn.output import token_log_likelihood
from .objectives import VAEOutput, word_dropout
from .prior import build_prior
from .tokenization import Tokenizer
from .training.checkpoint import load_weights, save_weights

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"


class TextVAE(nn.Module):
    def __init__(self, config: Config, tokenizer: Tokenizer, saved_dir: Optional[Path] = None) -> None:
        """``saved_dir``: a run directory whose saved backbone configs rebuild
        any ``hf:`` encoder or decoder without its pretrained weights."""
        super().__init__()
        check_names(config.model)
        self.config, self.tokenizer = config, tokenizer
        model = config.model
        self.latent_dim = model.latent_dim
        vocab, pad = tokenizer.vocab_size, tokenizer.pad_id
        if self.latent_dim > 0:
            self.encoder = build_encoder(model, vocab, pad, saved_dir)
            self.posterior_head = GaussianHead(self.encoder.output_dim, model.latent_dim, model.logvar_min,
                                               model.logvar_max, model.bn_vae_gamma, model.delta)
            self.prior = build_prior(model.prior, model.latent_dim, model.prior_components)
        self.decoder = build_decoder(model, vocab, pad, saved_dir)
        for module in self._backbones():
            module.check_tokenizer(tokenizer)

    def _backbones(self) -> list[nn.Module]:
        """The Hugging Face backbones (nn/hf.py) among the encoder and decoder."""
        return [m for m in (getattr(self, "encoder", None), self.decoder) if hasattr(m, "check_tokenizer")]

    # ----------------------------------------------------------------- core
    def posterior(self, batch: TextBatch) -> DiagonalGaussian:
        """q(z|x) for each sentence: mean and logvar (B, D)."""
        if self.latent_dim == 0:
            raise TextVAEError("this model is a language model (latent_dim=0): it has no latent space")
        return self.posterior_head(self.encoder(batch.tokens, batch.lengths))

    def forward(self, batch: TextBatch, generator: Optional[torch.Generator] = None) -> VAEOutput:
        """One-sample ELBO terms per sentence (nats)."""
        inputs, targets, mask = decoder_io(batch)
        z = kl_per_dim = mean = logvar = None
        if self.latent_dim > 0:
            q = self.posterior(batch)
            z, kl_per_dim, mean, logvar = q.sample(generator=generator), q.kl_per_dim(), q.mean, q.logvar
        if self.training and self.config.model.word_dropout > 0:
            tok = self.tokenizer
            protected = (inputs == tok.bos_id) | (inputs == tok.eos_id) | (inputs == tok.pad_id)
            inputs = word_dropout(inputs, self.config.model.word_dropout, tok.unk_id, protected, generator)
        rec = -self.sequence_log_likelihood(inputs, targets, mask, z)
        kl = kl_per_dim.sum(-1) if kl_per_dim is not None else torch.zeros_like(rec)
        return VAEOutput(rec=rec, kl=kl, kl_per_dim=kl_per_dim, mean=mean, logvar=logvar, tokens=mask.sum(1))

    def sequence_log_likelihood(self, inputs: Tensor, targets: Tensor, mask: Tensor, z: Optional[Tensor]) -> Tensor:
        """log p(targets | inputs, z) summed over the masked positions, (B,)."""
        state = self.decoder.initial_state(z, inputs.shape[0])
        hidden, _ = self.decoder(inputs, state)  # (B, T, H)
        return token_log_likelihood(hidden, self.decoder.output, targets, mask)

    def log_likelihood(self, batch: TextBatch, z: Tensor) -> Tensor:
        """log p(x|z) for S latent samples per sentence: z (S, B, D) -> (S, B)."""
        samples, size = z.shape[0], z.shape[1]
        inputs, targets, mask = decoder_io(batch)
        repeat = (samples, 1)
        flat = self.sequence_log_likelihood(inputs.repeat(repeat), targets.repeat(repeat), mask.repeat(repeat),
                                            z.reshape(samples * size, -1))
        return flat.view(samples, size)

    def reset_decoder(self) -> None:
        """Fresh decoder weights (Li et al. 2019: after autoencoder pretraining)."""
        for module in self.decoder.modules():
            if module is not self.decoder and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    # ------------------------------------------------------------ batching
    def batch(self, texts: list[str]) -> TextBatch:
        """Tokenise raw sentences into a batch on the model's device."""
        ids = []
        for text in texts:
            if not text.strip():
                raise TextVAEError("empty sentence")
            tokens = self.tokenizer.encode(text)[: self.config.data.max_length]
            if tokens and all(t == self.tokenizer.unk_id for t in tokens):
                raise TextVAEError(f"every word of {text!r} is unknown to the model's vocabulary")
            if not tokens:
                raise TextVAEError(f"{text!r} has no tokens")
            ids.append(tokens)
        return collate(ids, range(len(ids)), self.tokenizer).to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------ using it
    def encode(self, texts: list[str]) -> DiagonalGaussian:
        from .operations import encode

        return encode(self, texts)

    def sample(self, n: int = 10, **options) -> list[str]:
        from .operations import sample

        return sample(self, n, **options)

    def reconstruct(self, texts: list[str], **options) -> list[str]:
        from .operations import reconstruct

        return reconstruct(self, texts, **options)

    def complete(self, prefix: str, n: int = 5, **options) -> list[str]:
        from .operations import complete

        return complete(self, prefix, n, **options)

    def interpolate(self, start: str, end: str, steps: int = 7, **options) -> list[str]:
        from .operations import interpolate

        return interpolate(self, start, end, steps, **options)

    # --------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json``, ``model.safetensors``, ``tokenizer/`` and any
        backbone configs; the weights are written to a temporary file and renamed into place."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_FILE)
        self.tokenizer.save(directory / TOKENIZER_DIR)
        self.save_backbone_configs(directory)
        save_weights(self, directory / WEIGHTS_FILE)

    def save_backbone_configs(self, directory: str | Path) -> None:
        """``backbone_encoder/`` and ``backbone_decoder/`` for hf: backbones, so
        that ``from_pretrained`` rebuilds them offline from config and weights."""
        for module in self._backbones():
            module.save_backbone_config(Path(directory))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "TextVAE":
        """A trained model from a run folder, or a built-in model by name
        (``TextVAE.from_pretrained("wordnet")``; an existing path wins)."""
        directory = resolve_run(directory)
        check_run_dir(directory)
        config = Config.load(directory / CONFIG_FILE)
        model = cls(config, Tokenizer.load(directory / TOKENIZER_DIR), saved_dir=directory)
        load_weights(model, directory / WEIGHTS_FILE)
        return model.to(device).eval()


def decoder_io(batch: TextBatch) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher forcing: inputs (B, T-1) = bos..., targets (B, T-1) = ...eos, and
    the mask of real targets: eos is predicted and counted, bos and pad not."""
    inputs, targets = batch.tokens[:, :-1], batch.tokens[:, 1:]
    positions = torch.arange(targets.shape[1], device=targets.device)
    mask = positions.unsqueeze(0) < (batch.lengths - 1).unsqueeze(1)  # (B, T-1)
    return inputs, targets, mask


def check_run_dir(directory: Path) -> None:
    if not directory.is_dir():
        raise TextVAEError(f"{directory} is not a run directory (no such folder)")
    for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR):
        if not (directory / name).exists():
            raise TextVAEError(f"{directory} is not a textvae run directory (no {name})")
    try:
        kind = json.loads((directory / CONFIG_FILE).read_text()).get("kind", "text")
    except (json.JSONDecodeError, AttributeError):
        raise TextVAEError(f"{directory / CONFIG_FILE} is not valid JSON") from None
    if kind != "text":
        raise TextVAEError(f"{directory} holds a {kind} model, not a text VAE")
