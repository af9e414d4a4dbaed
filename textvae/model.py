"""TextVAE: encoder -> Gaussian q(z|x) -> autoregressive decoder p(x|z).

The model speaks in nats per sentence: ``forward`` returns per-sentence
reconstruction and KL terms (objectives.VAEOutput); ``posterior`` and
``log_likelihood`` are the small interface that the shared importance-weighted
NLL and latent statistics use (the MNIST model implements the same one).
With ``model.latent_dim=0`` it is the plain language-model baseline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from .base import BaseVAE
from .config import Config
from .data import TextBatch, collate
from .errors import TextVAEError
from .latent import DiagonalGaussian, GaussianHead
from .nn import HF_PREFIX, build_decoder, build_encoder, check_names
from .nn.output import token_log_likelihood
from .objectives import VAEOutput, word_dropout
from .prior import build_prior
from .run_folder import TOKENIZER_DIR
from .tokenization import Tokenizer


class TextVAE(BaseVAE):
    KIND = "text"
    CONFIG_CLASS = Config

    def __init__(self, config: Config, tokenizer: Tokenizer, saved_dir: Optional[Path] = None) -> None:
        """``saved_dir``: a run directory whose saved backbone configs rebuild
        any ``hf:`` encoder or decoder without its pretrained weights."""
        super().__init__()
        check_names(config.model)
        self.config, self.tokenizer = config, tokenizer
        self._word_constraint = None  # built on first use (word_constraint)
        model = config.model
        self.latent_dim = model.latent_dim
        vocab, pad = tokenizer.vocab_size, tokenizer.pad_id
        if self.has_latent:
            self.encoder = build_encoder(model, vocab, pad, saved_dir)
            self.posterior_head = GaussianHead(self.encoder.output_dim, model.latent_dim, model.logvar_min,
                                               model.logvar_max, model.bn_vae_gamma, model.delta)
            self.prior = build_prior(model.prior, model.latent_dim, model.prior_components)
            if config.objective.bow_weight > 0:
                self.bow_head = nn.Linear(model.latent_dim, vocab)  # Zhao et al. 2017
        self.decoder = build_decoder(model, vocab, pad, saved_dir)
        for module in self._backbones():
            module.check_tokenizer(tokenizer)

    def _backbones(self) -> list[nn.Module]:
        """The Hugging Face backbones (nn/hf.py) among the encoder and decoder."""
        return [m for m in (getattr(self, "encoder", None), self.decoder) if hasattr(m, "check_tokenizer")]

    # ----------------------------------------------------------------- core
    def posterior(self, batch: TextBatch) -> DiagonalGaussian:
        """q(z|x) for each sentence: mean and logvar (B, D)."""
        self.require_latent()
        return self.posterior_head(self.encoder(batch.tokens, batch.lengths))

    def forward(self, batch: TextBatch, generator: Optional[torch.Generator] = None) -> VAEOutput:
        """One-sample ELBO terms per sentence (nats)."""
        inputs, targets, mask = decoder_io(batch)
        z = kl_per_dim = mean = logvar = None
        if self.has_latent:
            q = self.posterior(batch)
            z, kl_per_dim, mean, logvar = q.sample(generator=generator), q.kl_per_dim(), q.mean, q.logvar
        if self.training and self.config.model.word_dropout > 0:
            tok = self.tokenizer
            protected = (inputs == tok.bos_id) | (inputs == tok.eos_id) | (inputs == tok.pad_id)
            inputs = word_dropout(inputs, self.config.model.word_dropout, tok.unk_id, protected, generator)
        rec = -self.sequence_log_likelihood(inputs, targets, mask, z)
        kl = kl_per_dim.sum(-1) if kl_per_dim is not None else torch.zeros_like(rec)
        bow = self.bag_of_words_nll(z, targets, mask) if hasattr(self, "bow_head") else None
        return VAEOutput(rec=rec, kl=kl, kl_per_dim=kl_per_dim, mean=mean, logvar=logvar, tokens=mask.sum(1),
                         bow=bow, z=z)

    def bag_of_words_nll(self, z: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        """Zhao et al. 2017 ("Learning Discourse-level Diversity for Neural
        Dialog Models using CVAEs", eq. 5): -sum_t log f(z)[x_t], one
        distribution over the vocabulary for the whole sentence, order ignored.
        z (B, D), targets and mask (B, T) -> (B,) nats."""
        log_probs = torch.log_softmax(self.bow_head(z).float(), dim=-1)  # (B, V)
        return -(log_probs.gather(1, targets) * mask).sum(1)

    def sequence_log_likelihood(self, inputs: Tensor, targets: Tensor, mask: Tensor, z: Optional[Tensor]) -> Tensor:
        """log p(targets | inputs, z) summed over the masked positions, (B,)."""
        state = self.decoder.initial_state(z, inputs.shape[0])
        hidden, _ = self.decoder(inputs, state)  # (B, T, H)
        return token_log_likelihood(hidden, self.decoder.output, targets, mask)

    @property
    def fresh_decoder_helps(self) -> bool:
        return self.has_latent and not self.config.model.decoder.startswith(HF_PREFIX)

    def log_likelihood(self, batch: TextBatch, z: Tensor) -> Tensor:
        """log p(x|z) for S latent samples per sentence: z (S, B, D) -> (S, B)."""
        samples, size = z.shape[0], z.shape[1]
        inputs, targets, mask = decoder_io(batch)
        repeat = (samples, 1)
        under_samples = getattr(self.decoder, "states_under_samples", None)  # the LSTM's: shared input gates
        hidden = under_samples(inputs, z) if under_samples is not None else None  # (S * B, T, H)
        if hidden is not None:
            flat = token_log_likelihood(hidden, self.decoder.output, targets.repeat(repeat), mask.repeat(repeat))
        else:
            flat = self.sequence_log_likelihood(inputs.repeat(repeat), targets.repeat(repeat), mask.repeat(repeat),
                                                z.reshape(samples * size, -1))
        return flat.view(samples, size)

    # ------------------------------------------------------------ batching
    def batch(self, texts: list[str]) -> TextBatch:
        """Tokenise raw sentences into a batch on the model's device."""
        ids = []
        for text in texts:
            if not text.strip():
                raise TextVAEError("empty sentence")
            tokens = self.tokenizer.encode(text)[: self.config.data.max_length]
            self.tokenizer.require_known(text, tokens)
            if not tokens:
                raise TextVAEError(f"{text!r} has no tokens")
            ids.append(tokens)
        return collate(ids, range(len(ids)), self.tokenizer).to(self.device)

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

    @property
    def word_constraint(self):
        """The training corpus's words as a decoding constraint (lexicon.py),
        built on first use from the tokenizer's word list."""
        from .word_cache import word_constraint

        if self._word_constraint is None:
            if not self.tokenizer.words:
                raise TextVAEError("this model has no word list (tokenizer/words.txt, written by `textvae train` "
                                   "since known-word decoding exists): give a list of words instead (--words FILE)")
            self._word_constraint = word_constraint(self.tokenizer, self.tokenizer.words)
        return self._word_constraint

    # --------------------------------------------------------- persistence
    def save_files(self, directory: Path) -> None:
        """``tokenizer/``, and ``backbone_encoder/`` / ``backbone_decoder/`` for
        hf: backbones, so that ``from_pretrained`` rebuilds them offline from
        config and weights (``save_pretrained`` adds config and weights)."""
        self.tokenizer.save(directory / TOKENIZER_DIR)
        for module in self._backbones():
            module.save_backbone_config(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "TextVAE":
        """The trained text model of a run folder (``config.json``,
        ``model.safetensors``, ``tokenizer/``), or a built-in model by name
        (``TextVAE.from_pretrained("wordnet")``; an existing path wins): how
        every command loads one."""
        return super().from_pretrained(directory, device)

    @classmethod
    def from_folder(cls, directory: Path, config: Config) -> "TextVAE":
        """The architecture of the run in ``directory`` under ``config``, with
        its tokenizer and backbone configs, freshly initialised."""
        return cls(config, Tokenizer.load(directory / TOKENIZER_DIR), saved_dir=directory)


def decoder_io(batch: TextBatch) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher forcing: inputs (B, T-1) = bos..., targets (B, T-1) = ...eos, and
    the mask of real targets: eos is predicted and counted, bos and pad not."""
    inputs, targets = batch.tokens[:, :-1], batch.tokens[:, 1:]
    positions = torch.arange(targets.shape[1], device=targets.device)
    mask = positions.unsqueeze(0) < (batch.lengths - 1).unsqueeze(1)  # (B, T-1)
    return inputs, targets, mask
