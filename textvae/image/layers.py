"""The convolutional encoder and decoder of the MNIST VAE, and one dict per
choice (``model.activation``, ``model.upsampling``) that the config validates
against, so the config and the model cannot drift.

    encoder  x (B, 1, 28, 28) -> [conv, act, max-pool] x 2 -> (B, 2C, 7, 7)
             -> fully connected (B, H)
    decoder  z (B, D) -> fully connected (B, H) -> (B, 2C, 7, 7)
             -> [2x upsampling: nearest then a transposed conv, or one stride-2
                transposed conv] x 2 -> Bernoulli logits (B, 1, 28, 28)
"""

from __future__ import annotations

from torch import Tensor, nn

from .data import SIDE

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}
COARSE = SIDE // 4  # 7: the feature maps' side after two 2x poolings


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
    input pixels). The same doubling learned in one step, and on CPU much
    faster than upsampling then convolving 4x as many pixels.
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
