"""What the text and image models share: the interface the trainer and the
evaluation use, and persistence in a run folder (as Hugging Face's
``PreTrainedModel`` does for its models).

A model offers ``forward(batch) -> VAEOutput`` (per-example terms in nats),
``posterior(batch) -> DiagonalGaussian`` and ``log_likelihood(batch, z)``
(the importance-weighted NLL), and ``reset_decoder()`` (AE pretraining). A
subclass names its ``KIND`` (``config.json``'s kind), its ``CONFIG_CLASS``, and
how to rebuild itself from a run folder's other files (``from_folder``) and
save them (``save_files``); ``infer(batch)`` (the posterior that using a model
starts from, inference.py), saving and loading the weights and checking the
folder are written here once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .builtin import resolve_run
from .errors import TextVAEError
from .inference import refine_posterior
from .latent import DiagonalGaussian
from .run_folder import CONFIG_FILE, WEIGHTS_FILE, check_run_dir, load_weights, save_weights


class BaseVAE(nn.Module):
    KIND = ""  # "text" or "image"
    CONFIG_CLASS: type  # the config tree: Config or ImageConfig
    latent_dim: int  # 0: a language model without a latent (text only)
    config: Any  # the whole config tree, saved as config.json

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def has_latent(self) -> bool:
        """False for the language-model baseline (``model.latent_dim=0``): no encoder, no z."""
        return self.latent_dim > 0

    def require_latent(self) -> None:
        if not self.has_latent:
            raise TextVAEError("this model is a language model (latent_dim=0): it has no latent space")

    def infer(self, batch) -> DiagonalGaussian:
        """q(z|x) for putting the model to use: the encoder's posterior with
        each mean refined by ``objective.refine_steps`` steps (inference.py)."""
        return refine_posterior(self, batch, self.posterior(batch), self.config.objective)

    @property
    def fresh_decoder_helps(self) -> bool:
        """Whether AE pretraining's fresh decoder makes sense: a latent to pretrain, a decoder of
        our own (the text model says no for a pretrained ``hf:`` one, whose weights a reset would lose)."""
        return self.has_latent

    def reset_decoder(self) -> None:
        """Fresh decoder weights (Li et al. 2019: after autoencoder pretraining)."""
        for module in self.decoder.modules():
            if module is not self.decoder and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    # --------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json``, the subclass's files, and ``model.safetensors``
        (written to a temporary file and renamed into place)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_FILE)
        self.save_files(directory)
        save_weights(self, directory / WEIGHTS_FILE)

    def save_files(self, directory: Path) -> None:
        """What the run folder needs besides the config and weights (the text model's tokenizer)."""

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "BaseVAE":
        """The trained model in a run folder, or a built-in model by name (an
        existing path wins), in eval mode on ``device``. Every command that
        uses a trained model loads it here."""
        directory = resolve_run(directory)
        check_run_dir(directory, cls.KIND)
        config = cls.CONFIG_CLASS.load(directory / CONFIG_FILE)
        check_shapes(cls, directory, config)
        model = cls.from_folder(directory, config)
        load_weights(model, directory / WEIGHTS_FILE)
        return model.to(device).eval()

    @classmethod
    def from_folder(cls, directory: Path, config: Any) -> "BaseVAE":
        """A freshly initialised model of a run folder's architecture (the
        weights come from ``model.safetensors`` or a checkpoint)."""
        raise NotImplementedError


def check_shapes(cls, directory: Path, config: Any) -> None:
    """Compare the config's architecture with the weights' shapes before any
    memory is spent on it: the model is first built on the meta device (no
    storage) and its tensors' shapes checked against the safetensors header,
    so a config.json that says hidden_dim 30000 is one error line, not 14 GB."""
    from .run_folder import weight_shapes

    stored = weight_shapes(directory / WEIGHTS_FILE)
    try:
        with torch.device("meta"):
            skeleton = cls.from_folder(directory, config)
    except TextVAEError:
        raise
    except Exception:  # a module that cannot be built without storage: the load below checks instead
        return
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict(keep_vars=True).items()}
    for name, shape in expected.items():
        if name in stored and stored[name] != shape:
            raise TextVAEError(f"{directory / CONFIG_FILE} does not fit its weights: {name} is "
                               f"{'x'.join(map(str, stored[name]))} in {WEIGHTS_FILE} but "
                               f"{'x'.join(map(str, shape))} by the config")
