"""Configuration: a tree of dataclasses, validated on construction.

Defaults live here and nowhere else. A run directory stores the whole tree as
``config.json``; the CLI reads a YAML or JSON file and then applies dotted
overrides (``--set model.latent_dim=16``) that are checked against the fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import TextVAEError

PRESET_DIR = Path(__file__).parent / "presets"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise TextVAEError(message)


def _choice(name: str, value: str, choices: typing.Iterable[str]) -> None:
    choices = list(choices)
    _check(value in choices, f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


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
    num_workers: int = 0

    def __post_init__(self) -> None:
        _check(self.max_length >= 1, "data.max_length must be >= 1")
        _check(self.bucket_batches >= 1, "data.bucket_batches must be >= 1")
        _check(self.num_workers >= 0, "data.num_workers must be >= 0")


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
    # Posterior-collapse remedies on the latent (latent.py). The default is
    # BN-VAE (Zhu et al. 2020): batch-normalised posterior means with scale
    # gamma keep the expected KL at least latent_dim * gamma^2 / 2 nats (5.76
    # for 32 dimensions) on any corpus, with every unit active, so a model
    # trained with no --config never collapses. 0 disables (a plain VAE).
    bn_vae_gamma: float = 0.6
    delta: float = 0.0  # delta-VAE (Razavi et al. 2019) committed rate; 0 disables
    # p(z) for sampling, completion and IW-NLL (prior.py): "normal" is N(0, I),
    # the prior the VAE trains with; "gmm" a second-stage Gaussian mixture of
    # prior_components fitted to the training sentences' posterior means after
    # training (Dai & Wipf 2019; `textvae fit-prior RUN`).
    prior: str = "normal"
    prior_components: int = 64

    def __post_init__(self) -> None:
        for name in ("embed_dim", "hidden_dim", "encoder_layers", "decoder_layers", "num_heads",
                     "max_positions", "memory_vectors"):
            _check(getattr(self, name) >= 1, f"model.{name} must be >= 1")
        for name in ("latent_dim", "encoder_hidden_dim", "ffn_dim"):
            _check(getattr(self, name) >= 0, f"model.{name} must be >= 0")
        _choice("model.latent_to_decoder", self.latent_to_decoder, ("init", "input", "both"))
        _choice("model.positions", self.positions, ("learned", "sinusoidal"))
        _choice("model.pooling", self.pooling, ("mean", "first", "attention"))
        _choice("model.prior", self.prior, ("normal", "gmm"))
        _check(self.prior_components >= 1, "model.prior_components must be >= 1")
        _choice("model.latent_injection", self.latent_injection, ("embedding", "memory", "both"))
        _check(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        _check(0.0 <= self.word_dropout <= 1.0, "model.word_dropout must be in [0, 1]")
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
    free_bits: float = 0.0  # nats; 0 disables
    free_bits_mode: str = "dim_batch"  # dim_batch (Kingma 2016, Li 2019), dim_example, total (a KL target)

    def __post_init__(self) -> None:
        _choice("objective.kl_schedule", self.kl_schedule, ("constant", "linear", "logistic", "cyclical"))
        _choice("objective.free_bits_mode", self.free_bits_mode, ("dim_batch", "dim_example", "total"))
        _check(self.kl_weight >= 0.0 and self.kl_start >= 0.0, "objective KL weights must be >= 0")
        _check(self.kl_warmup_steps >= 1, "objective.kl_warmup_steps must be >= 1")
        _check(self.kl_cycles >= 1, "objective.kl_cycles must be >= 1")
        _check(0.0 < self.kl_cycle_ratio <= 1.0, "objective.kl_cycle_ratio must be in (0, 1]")
        _check(self.free_bits >= 0.0, "objective.free_bits must be >= 0")


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
    num_threads: int = 0  # torch intra-op threads; 0 keeps torch's default
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
    # AE pretraining then a fresh decoder (Li et al. 2019)
    ae_pretrain_epochs: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "checkpoint_every", "log_every",
                     "aggressive_max_inner"):
            _check(getattr(self, name) >= 1, f"train.{name} must be >= 1")
        for name in ("max_steps", "lr_patience", "max_lr_decays", "early_stop_patience", "eval_every",
                     "num_threads", "ae_pretrain_epochs", "aggressive_eval_every", "aggressive_max_steps"):
            _check(getattr(self, name) >= 0, f"train.{name} must be >= 0")
        _choice("train.optimizer", self.optimizer, ("adam", "sgd"))
        _choice("train.lr_schedule", self.lr_schedule, ("plateau", "cosine"))
        _check(self.lr_warmup_steps >= 0, "train.lr_warmup_steps must be >= 0")
        _check(0.0 <= self.lr_final_fraction < 1.0, "train.lr_final_fraction must be in [0, 1)")
        _check(self.time_budget >= 0.0 and math.isfinite(self.time_budget), "train.time_budget must be >= 0 minutes")
        _choice("train.precision", self.precision, ("fp32", "bf16"))
        _check(self.lr > 0.0 and math.isfinite(self.lr), "train.lr must be a finite number > 0")
        _check(0.0 < self.lr_decay <= 1.0, "train.lr_decay must be in (0, 1]")
        _check(self.grad_clip >= 0.0, "train.grad_clip must be >= 0")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               f"train.device={self.device!r} is not auto, cpu or cuda[:N]")


@dataclass
class Config:
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Config":
        return from_dict(cls, raw, "")

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        return cls.from_dict(read_config_file(path))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file into a dict; a preset name is looked up too."""
    path = Path(path)
    if not path.exists():
        for candidate in (PRESET_DIR / path.name, PRESET_DIR / f"{path.name}.yaml"):
            if path.parent.name in ("", "presets") and candidate.exists():
                path = candidate
                break
        else:
            raise TextVAEError(f"config file {path} does not exist (presets: {', '.join(list_presets())})")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            raw = json.loads(text)
        else:
            raw = load_yaml(text)
    except Exception as error:  # yaml and json raise several types
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TextVAEError(f"cannot parse config file {path}: {first_line}") from None
    if raw is None:
        raw = {}
    _check(isinstance(raw, dict), f"config file {path} must hold a mapping of sections")
    return raw


# PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent:
# "1e-3" and "1.0e3" would stay strings and be refused for train.lr.
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$")


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that also reads ``1e-3`` as a float (as YAML 1.2 and JSON do)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))
    return yaml.load(text, Loader=Loader)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def from_dict(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from nested dicts, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        _check(key in names, f"unknown config key {dotted!r} (known: {', '.join(sorted(names))})")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            _check(isinstance(value, dict), f"config key {dotted!r} must be a section")
            kwargs[key] = from_dict(kind, value, dotted + ".")
        else:
            kwargs[key] = _coerce(value, kind, dotted)
    return cls(**kwargs)


def _coerce(value: Any, kind: Any, dotted: str) -> Any:
    """Check that ``value`` fits the annotated type (ints may stand for floats)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], dotted)
    if kind is bool:
        _check(isinstance(value, bool), f"config key {dotted!r} must be true or false, got {value!r}")
    elif kind is int:
        _check(isinstance(value, int) and not isinstance(value, bool),
               f"config key {dotted!r} must be an integer, got {value!r}")
    elif kind is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool),
               f"config key {dotted!r} must be a number, got {value!r}")
        return float(value)
    elif kind is str:
        _check(isinstance(value, str), f"config key {dotted!r} must be a string, got {value!r}")
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"model.latent_dim=16"`` -> (["model", "latent_dim"], 16) with a YAML-typed value."""
    import yaml

    _check("=" in text, f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    _check(bool(key.strip()), f"--set expects KEY=VALUE, got {text!r}")
    try:
        parsed = load_yaml(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, (dict, list)):
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str], root: Optional[type] = None) -> dict[str, Any]:
    """Apply ``--set`` strings to a raw config dict; keys are checked by ``from_dict``.
    ``root`` is the config tree's class (default ``Config``; the image model has its own)."""
    root = root or Config
    for text in overrides:
        path, value = parse_override(text)
        _check(len(path) == 2, f"--set key {'.'.join(path)!r} must be SECTION.FIELD, e.g. model.latent_dim")
        section, name = path
        sections = {f.name for f in dataclasses.fields(root)}
        _check(section in sections, f"unknown config section {section!r} (known: {', '.join(sorted(sections))})")
        target = raw.setdefault(section, {})
        if not isinstance(value, str) and name in _string_fields(section, root):
            value = text.split("=", 1)[1].strip()  # as typed: a path "007" is not 7, nor a name "1e3" 1000.0
        target[name] = value
    return raw


def _string_fields(section: str, root: type) -> set[str]:
    cls = typing.get_type_hints(root)[section]
    return {name for name, kind in typing.get_type_hints(cls).items() if kind is str}


def build_config(config_file: Optional[str | list[str]] = None, overrides: Optional[list[str]] = None,
                 base: Optional[dict[str, Any]] = None, root: Optional[type] = None) -> Any:
    """Config (or another ``root`` tree) from optional files (or a base dict) plus ``--set`` overrides.
    ``config_file`` is one file or a list (``--config`` repeated), later ones winning."""
    root = root or Config
    raw = dict(base or {})
    for file in [config_file] if isinstance(config_file, (str, Path)) else config_file or []:
        raw = _merge(raw, read_config_file(file))
    raw = apply_overrides(raw, overrides or [], root)
    return root.from_dict(raw)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged
