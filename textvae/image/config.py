"""The MNIST model's config tree: data, model, and the shared objective and training sections.

Saved as ``config.json`` with ``"kind": "image"`` at the top, so that text and
image run folders cannot be mistaken for each other. Files, presets and
``--set`` overrides go through the same machinery as the text config
(``textvae.config``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..config import ObjectiveConfig, TrainConfig
from ..config_tree import _check, _choice, build_tree, from_dict
from ..run_folder import read_json, write_json_atomic
from .data import BINARIZE_MODES
from .layers import ACTIVATIONS, UPSAMPLING

KIND = "image"


@dataclass
class ImageDataConfig:
    path: str = ""  # folder with the splits (see image/data.py) or one image file; recorded for --resume and eval
    binarize: str = "dynamic"  # grey images: a fresh Bernoulli draw per epoch ("dynamic") or one fixed draw ("static")
    seed: int = 0  # binarization (static draws, evaluation splits) and the held-out validation rows
    valid_fraction: float = 0.1  # share of the training images held out when there is no valid split
    # Validate during training on a seeded subset of N images (0: all). Each
    # validation also computes the MI, whose cost grows as N^2 * latent_dim.
    valid_limit: int = 0

    def __post_init__(self) -> None:
        _choice("data.binarize", self.binarize, BINARIZE_MODES)
        _check(0.0 < self.valid_fraction < 1.0, "data.valid_fraction must be in (0, 1)")
        _check(self.valid_limit >= 0, "data.valid_limit must be >= 0")
        _check(0 <= self.seed < 2**32, "data.seed must be in [0, 2**32)")


@dataclass
class ImageModelConfig:
    """The convolutional VAE (image/model.py). The encoder has two conv blocks
    of ``channels`` and ``2 * channels`` feature maps, each halving the image
    (28 -> 14 -> 7); the decoder mirrors it."""

    latent_dim: int = 200  # as in the original write-up
    channels: int = 32
    kernel_size: int = 5  # odd, so "same" padding keeps the size
    hidden_dim: int = 512  # fully connected layer between the 7x7 feature maps and the latent
    activation: str = "relu"
    upsampling: str = "nearest"  # decoder: "nearest" upsampling + transposed conv, or a "stride" 2 transposed conv
    logvar_min: float = -10.0
    logvar_max: float = 10.0
    bn_vae_gamma: float = 0.0  # Zhu et al. 2020; 0 disables

    def __post_init__(self) -> None:
        for name in ("latent_dim", "channels", "hidden_dim", "kernel_size"):
            _check(getattr(self, name) >= 1, f"model.{name} must be >= 1")
        _check(self.kernel_size % 2 == 1, "model.kernel_size must be odd")
        _choice("model.activation", self.activation, ACTIVATIONS)
        _choice("model.upsampling", self.upsampling, UPSAMPLING)
        _check(self.logvar_min < self.logvar_max, "model.logvar_min must be < model.logvar_max")
        _check(self.bn_vae_gamma >= 0.0, "model.bn_vae_gamma must be >= 0")


@dataclass
class ImageObjectiveConfig(ObjectiveConfig):
    """The text objective's fields; the image VAE's default has no free bits
    (the MNIST write-up's plain ELBO; the text default's free bits keep
    sentence VAEs from collapsing)."""

    free_bits: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.bow_weight == 0.0, "objective.bow_weight is for text models (a bag of words)")


@dataclass
class ImageConfig:
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    model: ImageModelConfig = field(default_factory=ImageModelConfig)
    objective: ImageObjectiveConfig = field(default_factory=ImageObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # batch sizes etc.: see the mnist-* presets

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, **dataclasses.asdict(self)}

    def save(self, path: str | Path) -> None:
        write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ImageConfig":
        raw = dict(raw)
        kind = raw.pop("kind", KIND)
        _check(kind == KIND, f"this config is for a {kind} model, not the MNIST VAE")
        return from_dict(cls, raw, "")

    @classmethod
    def load(cls, path: str | Path) -> "ImageConfig":
        raw = read_json(Path(path))
        _check(isinstance(raw, dict), f"{path} must hold a JSON object")
        return cls.from_dict(raw)


def build_image_config(config_file: Optional[str] = None, overrides: Optional[list[str]] = None,
                       base: Optional[dict[str, Any]] = None) -> ImageConfig:
    """Defaults, then an optional YAML/JSON file or preset, then ``--set`` overrides."""
    return build_tree(ImageConfig, config_file, overrides, base)
