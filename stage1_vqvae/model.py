"""VQ-VAE encoder / decoder in the style of the paper (van den Oord et al. 2017).

Encoder: ``n`` stride-2 4x4 convolutions (down-sampling factor ``2**n``), a 3x3
convolution, residual blocks (ReLU, 3x3, ReLU, 1x1), and a 1x1 projection to
``code_dim``. The decoder mirrors it with transposed convolutions. Images are float
(B, C, H, W) in [0, 1]; the network sees them centred on zero.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .quantizer import VectorQuantizer
from .runtime.errors import UserError


class ResBlock(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _num_down(downsample: int) -> int:
    n = int(round(math.log2(downsample))) if downsample > 0 else -1
    if downsample < 2 or 2**n != downsample:
        raise UserError(
            f"downsample must be a power of two >= 2 (2, 4, 8, ...), got {downsample}"
        )
    return n


def check_downsample(image_size: tuple[int, int], downsample: int) -> tuple[int, int]:
    """Check that ``downsample`` is a power of two >= 2 dividing both sides of
    ``image_size`` (H, W); return the code grid (H / downsample, W / downsample).

    Raises ``UserError`` naming the factor and a size that would fit. Used by the model and
    by the CLI (which checks before it touches data or the output folder).
    """
    h, w = image_size
    _num_down(downsample)  # before it is used as a divisor
    if h % downsample or w % downsample:
        raise UserError(
            f"image size {h}x{w} is not divisible by the down-sampling factor {downsample}; "
            f"use --image-size a multiple of {downsample} (e.g. {h - h % downsample or downsample}) "
            "or change --downsample"
        )
    return h // downsample, w // downsample


class Encoder(nn.Module):
    def __init__(
        self, in_channels: int, hidden: int, res_hidden: int, num_res: int, code_dim: int,
        downsample: int,
    ) -> None:
        super().__init__()
        n = _num_down(downsample)
        layers: list[nn.Module] = []
        ch = in_channels
        for i in range(n):
            out = hidden if i == n - 1 else max(hidden // 2, 1)
            layers += [nn.Conv2d(ch, out, 4, stride=2, padding=1), nn.ReLU()]
            ch = out
        layers.append(nn.Conv2d(ch, hidden, 3, padding=1))
        layers += [ResBlock(hidden, res_hidden) for _ in range(num_res)]
        layers += [nn.ReLU(), nn.Conv2d(hidden, code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images - 0.5)


class Decoder(nn.Module):
    def __init__(
        self, out_channels: int, hidden: int, res_hidden: int, num_res: int, code_dim: int,
        downsample: int,
    ) -> None:
        super().__init__()
        n = _num_down(downsample)
        layers: list[nn.Module] = [nn.Conv2d(code_dim, hidden, 3, padding=1)]
        layers += [ResBlock(hidden, res_hidden) for _ in range(num_res)]
        layers.append(nn.ReLU())
        ch = hidden
        for i in range(n):
            last = i == n - 1
            out = out_channels if last else max(hidden // 2, 1)
            layers.append(nn.ConvTranspose2d(ch, out, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.ReLU())
            ch = out
        self.net = nn.Sequential(*layers)

    def forward(self, z_q: Tensor) -> Tensor:
        # linear output (a sigmoid saturates at 0 on MNIST's black background and stalls)
        return self.net(z_q) + 0.5


class VQVAE(nn.Module):
    """images (B, C, H, W) in [0, 1] <-> codes int64 (B, H/f, W/f) in [0, num_codes).

    ``f`` is ``downsample``; ``image_size`` (H, W) must be divisible by it.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: tuple[int, int] = (28, 28),
        hidden: int = 64,
        res_hidden: int = 32,
        num_res: int = 2,
        code_dim: int = 32,
        num_codes: int = 256,
        downsample: int = 4,
        beta: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        kmeans_init: bool = True,
        dead_after: int = 50,
    ) -> None:
        super().__init__()
        h, w = image_size
        check_downsample((h, w), downsample)
        self.image_size = (h, w)
        self.in_channels = in_channels
        self.downsample = downsample
        self.num_codes, self.code_dim = num_codes, code_dim
        self.encoder = Encoder(in_channels, hidden, res_hidden, num_res, code_dim, downsample)
        self.quantizer = VectorQuantizer(
            num_codes, code_dim, beta=beta, ema=ema, decay=decay, kmeans_init=kmeans_init,
            dead_after=dead_after,
        )
        self.decoder = Decoder(in_channels, hidden, res_hidden, num_res, code_dim, downsample)

    @property
    def code_shape(self) -> tuple[int, int]:
        """(h, w) of the code grid for this model's image size."""
        return (self.image_size[0] // self.downsample, self.image_size[1] // self.downsample)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """images (B, C, H, W) -> (reconstruction (B, C, H, W), codes (B, h, w), vq losses)."""
        z_e = self.encoder(images)
        z_q, codes, losses = self.quantizer(z_e)
        return self.decoder(z_q), codes, losses

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images float (B, C, H, W) in [0, 1] -> codes int64 (B, h, w)."""
        return self.quantizer.quantize(self.encoder(images))

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        """images (B, C, H, W) in [0, 1] -> decoded codes, same shape, in [0, 1] (the
        Gaussian VAE has the same method, decoding its posterior mean)."""
        return self.decode_codes(self.encode(images))

    @torch.no_grad()
    def decode_codes(self, codes: Tensor) -> Tensor:
        """codes int64 (B, h, w) in [0, num_codes) -> images float (B, C, H', W') in [0, 1].

        Any grid size decodes (the decoder is fully convolutional); H' = h * downsample.
        """
        return self.decoder(self.quantizer.lookup(codes)).clamp_(0.0, 1.0)
