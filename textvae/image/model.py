"""ConvVAE: the convolutional MNIST VAE, on the shared latent, objective,
trainer and importance-weighted NLL.

    encoder  x (B, 1, 28, 28) -> [conv, act, max-pool] x 2 -> (B, 2C, 7, 7)
             -> fully connected (B, H) -> GaussianHead -> q(z|x), (B, D)
    decoder  z (B, D) -> fully connected (B, H) -> (B, 2C, 7, 7)
             -> [2x upsampling: nearest then a transposed conv, or one stride-2
                transposed conv (model.upsampling)] x 2 -> Bernoulli logits (B, 1, 28, 28)

p(x|z) is a product of independent Bernoulli pixels; log p(x|z) is summed
over the 784 pixels, in nats per image. The model implements the interface
the shared code uses: ``forward(batch) -> VAEOutput``, ``posterior(batch)``,
``log_likelihood(batch, z)`` and ``reset_decoder()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..latent import DiagonalGaussian, GaussianHead
from ..objectives import VAEOutput
from ..training.checkpoint import load_weights, save_weights
from .batches import ImageBatch
from .config import ImageConfig, check_image_run_dir
from .data import N_PIXELS, SIDE

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}
COARSE = SIDE // 4  # 7: the feature maps' side after two 2x poolings


def bernoulli_log_likelihood(logits: Tensor, images: Tensor) -> Tensor:
    """log p(x|z) = sum over pixels of x log sigmoid(l) + (1 - x) log sigmoid(-l).

    logits, images: (..., 1, 28, 28) -> (...), nats per image. Computed in
    float32 even under bf16 autocast.
    """
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), images.float(), reduction="none")
    return -per_pixel.flatten(-3).sum(-1)


class ConvEncoder(nn.Module):
    def __init__(self, channels: int, kernel_size: int, hidden_dim: int, activation: type) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size, padding=pad), activation(), nn.MaxPool2d(2),  # (B, C, 14, 14)
            nn.Conv2d(channels, 2 * channels, kernel_size, padding=pad), activation(), nn.MaxPool2d(2),  # (B, 2C, 7, 7)
            nn.Flatten(),
            nn.Linear(2 * channels * COARSE * COARSE, hidden_dim), activation(),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)  # (B, 1, 28, 28) -> (B, H)


def nearest_upsampling(in_channels: int, out_channels: int, kernel_size: int) -> nn.Module:
    """Nearest-neighbour 2x upsampling, then a size-keeping transposed conv."""
    return nn.Sequential(nn.Upsample(scale_factor=2),
                         nn.ConvTranspose2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2))


def strided_upsampling(in_channels: int, out_channels: int, kernel_size: int) -> nn.Module:
    """One transposed conv of stride 2 (kernel 4: every output pixel sees 2x2
    input pixels). The same doubling learned in one step; on CPU it runs
    several times faster than upsampling then convolving 4x as many pixels.
    ``kernel_size`` is not used."""
    return nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)


UPSAMPLING = {"nearest": nearest_upsampling, "stride": strided_upsampling}


class ConvDecoder(nn.Module):
    def __init__(self, latent_dim: int, channels: int, kernel_size: int, hidden_dim: int, activation: type,
                 upsampling: str = "nearest") -> None:
        super().__init__()
        self.channels = channels
        upsample = UPSAMPLING[upsampling]
        self.project = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), activation(),
            nn.Linear(hidden_dim, 2 * channels * COARSE * COARSE), activation(),
        )
        self.upsample = nn.Sequential(
            upsample(2 * channels, channels, kernel_size), activation(),  # (B, C, 14, 14)
            upsample(channels, 1, kernel_size),  # (B, 1, 28, 28)
        )

    def forward(self, z: Tensor) -> Tensor:
        """z (N, D) -> Bernoulli logits (N, 1, 28, 28)."""
        maps = self.project(z).view(-1, 2 * self.channels, COARSE, COARSE)  # (N, 2C, 7, 7)
        return self.upsample(maps)


class ConvVAE(nn.Module):
    def __init__(self, config: ImageConfig) -> None:
        super().__init__()
        self.config = config
        m = config.model
        activation = ACTIVATIONS[m.activation]
        self.latent_dim = m.latent_dim
        self.encoder = ConvEncoder(m.channels, m.kernel_size, m.hidden_dim, activation)
        self.posterior_head = GaussianHead(m.hidden_dim, m.latent_dim, m.logvar_min, m.logvar_max, m.bn_vae_gamma)
        self.decoder = ConvDecoder(m.latent_dim, m.channels, m.kernel_size, m.hidden_dim, activation, m.upsampling)

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
                         tokens=tokens)

    def log_likelihood(self, batch: ImageBatch, z: Tensor) -> Tensor:
        """log p(x|z) for S latent samples per image: z (S, B, D) -> (S, B), nats."""
        samples, size = z.shape[0], z.shape[1]
        logits = self.decoder(z.reshape(samples * size, -1)).view(samples, size, 1, SIDE, SIDE)
        return bernoulli_log_likelihood(logits, batch.images.unsqueeze(0).expand_as(logits))

    def reset_decoder(self) -> None:
        """Fresh decoder weights (Li et al. 2019: after autoencoder pretraining)."""
        for module in self.decoder.modules():
            if module is not self.decoder and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------ using it
    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Pixel probabilities (N, 1, 28, 28) for latents z (N, D)."""
        return torch.sigmoid(self.decoder(z.to(self.device)).float())

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """Pixel probabilities (n, 1, 28, 28) of images decoded from z ~ N(0, I)."""
        z = torch.randn(n, self.latent_dim, generator=generator)
        return self.decode(z)

    @torch.no_grad()
    def encode(self, images: Tensor) -> DiagonalGaussian:
        """q(z|x) of binary images (N, 1, 28, 28)."""
        return self.posterior(ImageBatch(images.to(self.device), torch.zeros(len(images))))

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
    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json`` (with ``"kind": "image"``) and ``model.safetensors``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_FILE)
        save_weights(self, directory / WEIGHTS_FILE)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "ConvVAE":
        directory = Path(directory)
        check_image_run_dir(directory)
        model = cls(ImageConfig.load(directory / CONFIG_FILE))
        load_weights(model, directory / WEIGHTS_FILE)
        return model.to(device).eval()
