"""ConvVAE: the convolutional MNIST VAE, on the shared latent, objective,
trainer and importance-weighted NLL.

    encoder  x (B, 1, 28, 28) -> [conv, act, max-pool] x 2 -> (B, 2C, 7, 7)
             -> fully connected (B, H) -> GaussianHead -> q(z|x), (B, D)
    decoder  z (B, D) -> fully connected (B, H) -> (B, 2C, 7, 7)
             -> [2x upsampling: nearest then a transposed conv, or one stride-2
                transposed conv (model.upsampling)] x 2 -> Bernoulli logits (B, 1, 28, 28)

p(x|z) is a product of independent Bernoulli pixels; log p(x|z) is summed
over the 784 pixels, in nats per image. The model implements the interface
the shared code uses (``base.BaseVAE``): ``forward(batch) ->
VAEOutput``, ``posterior(batch)``, ``log_likelihood(batch, z)`` and
``reset_decoder()``. The layers are in ``layers.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import BaseVAE
from ..latent import DiagonalGaussian, GaussianHead
from ..objectives import VAEOutput
from ..prior import StandardNormalPrior
from .batches import ImageBatch
from .config import ImageConfig
from .data import N_PIXELS, SIDE
from .layers import ACTIVATIONS, ConvDecoder, ConvEncoder


def bernoulli_log_likelihood(logits: Tensor, images: Tensor) -> Tensor:
    """log p(x|z) = sum over pixels of x log sigmoid(l) + (1 - x) log sigmoid(-l).

    logits, images: (..., 1, 28, 28) -> (...), nats per image. Computed in
    float32 even under bf16 autocast.
    """
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), images.float(), reduction="none")
    return -per_pixel.flatten(-3).sum(-1)


class ConvVAE(BaseVAE):
    KIND = "image"
    CONFIG_CLASS = ImageConfig

    def __init__(self, config: ImageConfig) -> None:
        super().__init__()
        self.config = config
        m = config.model
        activation = ACTIVATIONS[m.activation]
        self.latent_dim = m.latent_dim
        self.encoder = ConvEncoder(m.channels, m.kernel_size, m.hidden_dim, activation)
        self.posterior_head = GaussianHead(m.hidden_dim, m.latent_dim, m.logvar_min, m.logvar_max, m.bn_vae_gamma)
        self.decoder = ConvDecoder(m.latent_dim, m.channels, m.kernel_size, m.hidden_dim, activation, m.upsampling)
        self.prior = StandardNormalPrior(m.latent_dim)  # no state: the weights file is unchanged

    # ----------------------------------------------------------------- core
    def posterior(self, batch: ImageBatch) -> DiagonalGaussian:
        """q(z|x) for each image: mean and logvar (B, D)."""
        return self.posterior_head(self.encoder(batch.images))

    def forward(self, batch: ImageBatch, generator: Optional[torch.Generator] = None) -> VAEOutput:
        """One-sample ELBO terms per image (nats)."""
        q = self.posterior(batch)
        z = q.sample(generator=generator)  # (B, D)
        rec = -bernoulli_log_likelihood(self.decoder(z), batch.images)  # (B,)
        kl_per_dim = q.kl_per_dim()  # (B, D)
        tokens = torch.full_like(rec, N_PIXELS, dtype=torch.long)
        return VAEOutput(rec=rec, kl=kl_per_dim.sum(-1), kl_per_dim=kl_per_dim, mean=q.mean, logvar=q.logvar,
                         tokens=tokens, z=z)

    def log_likelihood(self, batch: ImageBatch, z: Tensor) -> Tensor:
        """log p(x|z) for S latent samples per image: z (S, B, D) -> (S, B), nats."""
        samples, size = z.shape[0], z.shape[1]
        logits = self.decoder(z.reshape(samples * size, -1)).view(samples, size, 1, SIDE, SIDE)
        return bernoulli_log_likelihood(logits, batch.images.unsqueeze(0).expand_as(logits))

    # ------------------------------------------------------------ using it
    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Pixel probabilities (N, 1, 28, 28) for latents z (N, D)."""
        return torch.sigmoid(self.decoder(z.to(self.device)).float())

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None, prior_temperature: float = 1.0) -> Tensor:
        """Pixel probabilities (n, 1, 28, 28) of images decoded from z ~ N(0, T^2 I)
        (T = ``prior_temperature``, prior.py)."""
        return self.decode(self.prior.sample(n, generator, temperature=prior_temperature))

    @torch.no_grad()
    def encode(self, images: Tensor) -> DiagonalGaussian:
        """q(z|x) of binary images (N, 1, 28, 28) (``infer``: refined if the config says so)."""
        return self.infer(ImageBatch(images.to(self.device), torch.zeros(len(images))))

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        """Pixel probabilities (N, 1, 28, 28) decoded from the posterior means."""
        return self.decode(self.encode(images).mean)

    @torch.no_grad()
    def interpolate(self, start: Tensor, end: Tensor, steps: int = 10) -> Tensor:
        """Images along the straight line between the posterior means of two
        batches of images (N, 1, 28, 28): returns (N, steps, 1, 28, 28)."""
        means = self.encode(torch.cat([start, end])).mean  # (2N, D)
        a, b = means.chunk(2)
        weights = torch.linspace(0, 1, steps, device=means.device).view(1, steps, 1)
        path = a.unsqueeze(1) * (1 - weights) + b.unsqueeze(1) * weights  # (N, steps, D)
        return self.decode(path.reshape(-1, self.latent_dim)).view(len(a), steps, 1, SIDE, SIDE)

    # --------------------------------------------------------- persistence
    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "ConvVAE":
        """The trained MNIST model of a run folder (``config.json`` with
        ``"kind": "image"``, ``model.safetensors``): how every command loads one."""
        return super().from_pretrained(directory, device)

    @classmethod
    def from_folder(cls, directory: Path, config: ImageConfig) -> "ConvVAE":
        return cls(config)
