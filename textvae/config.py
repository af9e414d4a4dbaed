"""Configuration: a tree of dataclasses, validated on construction.

Defaults live here and nowhere else. A run directory stores the whole tree as
``config.json``; the CLI reads a YAML or JSON file and then applies dotted
overrides (``--set model.latent_dim=16``) that are checked against the fields.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import config_tree
from .run_folder import write_json_atomic
# Files, presets and type-checked trees are shared with the image config (config_tree.py).
from .config_tree import _check, _choice, from_dict, list_presets, read_config_file  # noqa: F401


@dataclass
class TokenizerConfig:
    """The text front end (see ``tokenization.py``).

    ``spec`` is ``word``, ``bpe``, ``wordpiece`` or ``unigram`` (trained on the
    training split), a Hugging Face tokenizer folder or ``tokenizer.json``, or
    a hub name.
    """

    spec: str = "word"
    vocab_size: int = 10000  # for trained tokenizers; word level: 0 keeps every training word
    min_frequency: int = 1
    lowercase: bool = False

    def __post_init__(self) -> None:
        _check(bool(self.spec), "tokenizer.spec must not be empty")
        _check(self.vocab_size >= 0, "tokenizer.vocab_size must be >= 0")
        _check(self.min_frequency >= 1, "tokenizer.min_frequency must be >= 1")


@dataclass
class DataConfig:
    path: str = ""  # file, folder with train/valid/test files, or hf:NAME; recorded for --resume
    max_length: int = 64  # tokens per sentence, not counting bos/eos; longer ones are truncated
    text_column: str = "text"  # for hub datasets
    bucket_batches: int = 50  # length-bucketing window, in batches

    def __post_init__(self) -> None:
        _check(self.max_length >= 1, "data.max_length must be >= 1")
        _check(self.bucket_batches >= 1, "data.bucket_batches must be >= 1")


@dataclass
class ModelConfig:
    """Architecture. ``latent_dim=0`` gives the language-model baseline."""

    encoder: str = "lstm"
    decoder: str = "lstm"
    embed_dim: int = 256
    hidden_dim: int = 256  # decoder width (LSTM hidden size or Transformer d_model)
    encoder_hidden_dim: int = 0  # 0: same as hidden_dim
    encoder_layers: int = 1
    decoder_layers: int = 1
    bidirectional: bool = False  # LSTM encoder
    latent_dim: int = 32
    latent_to_decoder: str = "both"  # LSTM: "init" state, "input" concat, or "both"
    dropout: float = 0.0  # on embeddings and decoder outputs
    word_dropout: float = 0.0  # Bowman et al. 2016: decoder inputs -> unk, training only
    weight_drop: float = 0.0  # LSTMs: DropConnect on hidden-to-hidden weights (Merity et al. 2018), training only
    logvar_min: float = -10.0
    logvar_max: float = 10.0
    tie_embeddings: bool = False  # share decoder input and output embeddings
    # Transformer blocks (nn/transformer.py)
    num_heads: int = 4
    ffn_dim: int = 0  # 0: 4 * width
    positions: str = "learned"  # or "sinusoidal"
    max_positions: int = 256
    pooling: str = "mean"  # q(z|x) from encoder states: "mean", "first" or "attention"
    latent_injection: str = "both"  # Transformer decoder: "embedding", "memory" or "both"
    memory_vectors: int = 1
    freeze_backbone: bool = False  # hf: encoders/decoders
    # Posterior-collapse remedies on the latent (latent.py); the default remedy
    # is AE pretraining + free bits (train.ae_pretrain_fraction, objective.free_bits).
    bn_vae_gamma: float = 0.0  # BN-VAE (Zhu et al. 2020); 0 disables
    delta: float = 0.0  # delta-VAE (Razavi et al. 2019) committed rate; 0 disables
    # p(z) for sampling, completion and IW-NLL (prior.py): "normal" is N(0, I),
    # the prior the VAE trains with; "gmm" a second-stage Gaussian mixture of
    # prior_components fitted to the training sentences' posterior means after
    # training (Dai & Wipf 2019); "exemplar" the posteriors of prior_components
    # training sentences (Tomczak & Welling 2018; Norouzi et al. 2020). Both
    # are fitted by `textvae fit-prior RUN [--kind exemplar]`.
    prior: str = "normal"
    prior_components: int = 64
    # Decoding spells only words of the training corpus (tokenizer/words.txt;
    # lexicon.py): no made-up words from sub-word pieces. Off by default: it
    # also rules out any word the corpus lacks. `--known-words` / `--any-words`.
    known_words: bool = False
    # How `sample` and `complete` decode where the call does not say (flags and
    # keyword arguments win): a model can ship with the decoding its samples
    # read best under (e.g. greedy, z nearer the prior's modes).
    sample_strategy: str = "sample"  # greedy, sample or beam
    prior_temperature: float = 1.0  # `sample`: the prior's spread around its modes scaled by this (prior.py)

    def __post_init__(self) -> None:
        for name in ("embed_dim", "hidden_dim", "encoder_layers", "decoder_layers", "num_heads",
                     "max_positions", "memory_vectors"):
            _check(getattr(self, name) >= 1, f"model.{name} must be >= 1")
        for name in ("latent_dim", "encoder_hidden_dim", "ffn_dim"):
            _check(getattr(self, name) >= 0, f"model.{name} must be >= 0")
        _choice("model.latent_to_decoder", self.latent_to_decoder, ("init", "input", "both"))
        _choice("model.positions", self.positions, ("learned", "sinusoidal"))
        _choice("model.pooling", self.pooling, ("mean", "first", "attention"))
        _choice("model.prior", self.prior, ("normal", "gmm", "exemplar"))
        _check(self.prior_components >= 1, "model.prior_components must be >= 1")
        _choice("model.sample_strategy", self.sample_strategy, ("greedy", "sample", "beam"))
        _check(0 < self.prior_temperature < float("inf"), "model.prior_temperature must be a finite number > 0")
        _choice("model.latent_injection", self.latent_injection, ("embedding", "memory", "both"))
        _check(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        _check(0.0 <= self.word_dropout <= 1.0, "model.word_dropout must be in [0, 1]")
        _check(0.0 <= self.weight_drop < 1.0, "model.weight_drop must be in [0, 1)")
        _check(self.weight_drop == 0 or "lstm" in (self.encoder, self.decoder),
               "model.weight_drop applies to LSTM encoders and decoders, and this model has neither")
        _check(self.logvar_min < self.logvar_max, "model.logvar_min must be < model.logvar_max")
        _check(self.bn_vae_gamma >= 0.0, "model.bn_vae_gamma must be >= 0")
        _check(self.delta >= 0.0, "model.delta must be >= 0")

    @property
    def encoder_width(self) -> int:
        return self.encoder_hidden_dim or self.hidden_dim


@dataclass
class ObjectiveConfig:
    """The ELBO's KL weight schedule and free bits (objectives.py)."""

    kl_schedule: str = "constant"  # constant, linear, logistic, cyclical
    kl_weight: float = 1.0  # the weight the schedule reaches
    kl_start: float = 0.0  # linear: weight at step 0
    kl_warmup_steps: int = 10000  # linear: steps to reach kl_weight; logistic: midpoint is half of it
    kl_logistic_k: float = 0.0025
    kl_cycles: int = 4  # cyclical (Fu et al. 2019): number of cycles over train.max_steps / epochs
    kl_cycle_ratio: float = 0.5  # fraction of a cycle spent increasing
    # With the default AE pretraining (TextTrainConfig), keeps a model trained
    # with no --config from collapsing: no KL pressure below 0.25 nats a
    # dimension (Kingma et al. 2016; Li et al. 2019's AE-FB).
    free_bits: float = 0.25  # nats; 0 disables
    free_bits_mode: str = "dim_batch"  # dim_batch (Kingma 2016, Li 2019), dim_example, total (a KL target)
    # Text: weight of the bag-of-words loss, -log p(each target token | z) from
    # a linear head on z (Zhao et al. 2017); it makes z name the sentence's
    # words, whatever the decoder could guess; 0 disables.
    bow_weight: float = 0.0
    # Weight of the maximum mean discrepancy between the batch's codes and
    # N(0, I) samples (WAE-MMD, Tolstikhin et al. 2018): pulls the aggregate
    # posterior onto the prior, so prior samples decode to sentences even
    # when each code is precise; 0 disables.
    mmd_weight: float = 0.0
    # Semi-amortized inference (inference.py, Kim et al. 2018): when the model
    # is put to use (encode, reconstruct, interpolate, the evaluation's
    # reconstructions), each example's posterior mean takes refine_steps Adam
    # steps of rate refine_lr on its own objective; 0 keeps the encoder's mean.
    refine_steps: int = 0
    refine_lr: float = 0.05

    def __post_init__(self) -> None:
        _choice("objective.kl_schedule", self.kl_schedule, ("constant", "linear", "logistic", "cyclical"))
        _choice("objective.free_bits_mode", self.free_bits_mode, ("dim_batch", "dim_example", "total"))
        _check(self.kl_weight >= 0.0 and self.kl_start >= 0.0, "objective KL weights must be >= 0")
        _check(self.kl_warmup_steps >= 1, "objective.kl_warmup_steps must be >= 1")
        _check(self.kl_cycles >= 1, "objective.kl_cycles must be >= 1")
        _check(0.0 < self.kl_cycle_ratio <= 1.0, "objective.kl_cycle_ratio must be in (0, 1]")
        _check(self.free_bits >= 0.0, "objective.free_bits must be >= 0")
        _check(self.bow_weight >= 0.0, "objective.bow_weight must be >= 0")
        _check(self.mmd_weight >= 0.0, "objective.mmd_weight must be >= 0")
        _check(self.refine_steps >= 0, "objective.refine_steps must be >= 0")
        _check(self.refine_lr > 0.0, "objective.refine_lr must be > 0")


@dataclass
class TrainConfig:
    seed: int = 0
    epochs: int = 10
    max_steps: int = 0  # 0: no limit beyond epochs
    batch_size: int = 32
    eval_batch_size: int = 64
    optimizer: str = "adam"  # adam or sgd
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 5.0  # max gradient norm; 0 disables
    # A step whose loss or gradient is NaN or inf is skipped (training/guard.py);
    # this many in a row stop the run with an error (the weights have diverged).
    max_nonfinite_steps: int = 20
    # Learning-rate schedule over the run (training/schedule.py): "plateau"
    # decays by lr_decay when validation stalls; "cosine" falls from lr to 0
    # over the run (Loshchilov & Hutter 2017). The run's length is max_steps,
    # epochs or time_budget, whichever ends first.
    lr_schedule: str = "plateau"
    lr_warmup_steps: int = 0  # linear warm-up from 0 at the start (and after AE pretraining)
    lr_final_fraction: float = 0.0  # plateau: over this last fraction of the run the lr falls linearly to 0
    time_budget: float = 0.0  # minutes of training (validation included), counted across resumes; 0: none
    lr_decay: float = 0.5  # multiply the lr by this when validation stops improving
    lr_patience: int = 2  # evaluations without improvement before a decay
    max_lr_decays: int = 5  # stop after this many decays; 0: never decay
    early_stop_patience: int = 0  # evaluations without improvement before stopping; 0: off
    eval_every: int = 0  # steps between validations; 0: once per epoch
    checkpoint_every: int = 200  # steps between resumable checkpoints
    log_every: int = 20  # steps between training log lines (each the mean over those steps)
    precision: str = "fp32"  # fp32 or bf16 (autocast)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    num_threads: int = 0  # torch intra-op threads; 0: one per core other processes leave free (threads.py)
    # Aggressive inference-network training (He et al. 2019)
    aggressive: bool = False
    aggressive_max_inner: int = 100
    # Steps between validations (and so MI checks) while the aggressive phase
    # lasts; 0: as eval_every. He et al. check once an epoch; checking more
    # often ends the costly phase sooner once MI stops rising.
    aggressive_eval_every: int = 0
    # Longest aggressive phase in (outer) steps, 0: no limit. Each of its steps
    # costs up to aggressive_max_inner + 1 ordinary ones, so a budget needs a cap.
    aggressive_max_steps: int = 0
    # AE pretraining then a fresh decoder (Li et al. 2019): for this many epochs,
    # or, where that is 0, for this fraction of the run (by steps or by the time
    # budget, as the learning-rate schedule counts it). 0 and 0: none.
    ae_pretrain_epochs: int = 0
    ae_pretrain_fraction: float = 0.0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "checkpoint_every", "log_every",
                     "aggressive_max_inner", "max_nonfinite_steps"):
            _check(getattr(self, name) >= 1, f"train.{name} must be >= 1")
        for name in ("max_steps", "lr_patience", "max_lr_decays", "early_stop_patience", "eval_every",
                     "num_threads", "ae_pretrain_epochs", "aggressive_eval_every", "aggressive_max_steps"):
            _check(getattr(self, name) >= 0, f"train.{name} must be >= 0")
        _check(0 <= self.seed < 2**32, "train.seed must be in [0, 2**32)")
        _choice("train.optimizer", self.optimizer, ("adam", "sgd"))
        _choice("train.lr_schedule", self.lr_schedule, ("plateau", "cosine"))
        _check(self.lr_warmup_steps >= 0, "train.lr_warmup_steps must be >= 0")
        _check(0.0 <= self.ae_pretrain_fraction < 1.0, "train.ae_pretrain_fraction must be in [0, 1)")
        _check(0.0 <= self.lr_final_fraction < 1.0, "train.lr_final_fraction must be in [0, 1)")
        _check(self.time_budget >= 0.0 and math.isfinite(self.time_budget), "train.time_budget must be >= 0 minutes")
        _choice("train.precision", self.precision, ("fp32", "bf16"))
        _check(self.lr > 0.0 and math.isfinite(self.lr), "train.lr must be a finite number > 0")
        _check(0.0 < self.lr_decay <= 1.0, "train.lr_decay must be in (0, 1]")
        _check(self.grad_clip >= 0.0, "train.grad_clip must be >= 0")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               f"train.device={self.device!r} is not auto, cpu or cuda[:N]")


@dataclass
class TextTrainConfig(TrainConfig):
    # The default remedy of a text model, with objective.free_bits: the first
    # quarter of the run (steps, epochs or time budget, so any corpus and run
    # length) trains an autoencoder, then a fresh decoder trains as a VAE
    # (Li et al. 2019; README, "The defaults do not collapse").
    ae_pretrain_fraction: float = 0.25


@dataclass
class Config:
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TextTrainConfig = field(default_factory=TextTrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Config":
        if isinstance(raw.get("data"), dict) and "num_workers" in raw["data"]:
            # Read nowhere and removed; run folders written before still hold it.
            raw = {**raw, "data": {k: v for k, v in raw["data"].items() if k != "num_workers"}}
        train = raw.get("train")
        if isinstance(train, dict) and "ae_pretrain_epochs" in train and "ae_pretrain_fraction" not in train:
            # A run saved before the fraction existed (or a file that sets the epochs): no AE phase by fraction.
            raw = {**raw, "train": {**train, "ae_pretrain_fraction": 0.0}}
        return from_dict(cls, raw, "")

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        return cls.from_dict(read_config_file(path))


def apply_overrides(raw: dict[str, Any], overrides: list[str], root: Optional[type] = None) -> dict[str, Any]:
    """Apply ``--set`` strings to a raw config dict; keys are checked by ``from_dict``.
    ``root`` is the config tree's class (default ``Config``; the image model has its own)."""
    return config_tree.apply_overrides(raw, overrides, root or Config)


def build_config(config_file: Optional[str | list[str]] = None, overrides: Optional[list[str]] = None,
                 base: Optional[dict[str, Any]] = None, root: Optional[type] = None) -> Any:
    """Config (or another ``root`` tree) from optional files (or a base dict) plus ``--set`` overrides.
    ``config_file`` is one file or a list (``--config`` repeated), later ones winning."""
    return config_tree.build_tree(root or Config, config_file, overrides, base)
