"""The VQ-GAN's adversarial parts (Esser et al. 2021, "Taming Transformers"), pure torch:
a PatchGAN discriminator whose depth follows the image size, hinge losses, feature matching
on the discriminator's intermediate features, the adaptive weight of the adversarial term,
and an optional LPIPS perceptual loss (the ``lpips`` package, when its weights are here).

Images are float (B, C, H, W) in [0, 1]; the discriminator sees them centred on zero.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .runtime.errors import MissingInputError, UserError

# LPIPS's VGG backbone: torchvision's ImageNet weights, looked up in the torch hub cache
LPIPS_BACKBONE_FILE = "vgg16-397923af.pth"
MAX_DISC_LAYERS = 3
# first-layer channels of the PatchGAN: SMALL_DISC_WIDTH up to SMALL_IMAGE_SIDE px, else 64
SMALL_IMAGE_SIDE, SMALL_DISC_WIDTH, DISC_WIDTH = 32, 16, 64


def receptive_field(num_layers: int) -> int:
    """Receptive field (pixels) of one logit of :class:`PatchDiscriminator` with
    ``num_layers`` stride-2 4x4 convolutions followed by two stride-1 4x4 ones."""
    strides = [2] * num_layers + [1, 1]
    rf, jump = 1, 1
    for s in strides:
        rf += 3 * jump
        jump *= s
    return rf


def disc_layers_for(image_size: tuple[int, int]) -> int:
    """Stride-2 layers of the PatchGAN for images of ``image_size`` (H, W): the deepest of
    1..3 whose receptive field is at most 0.6 x the smaller side.

    Why: the pix2pix / VQGAN default (3 layers, 70 px patches) sees a whole 28x28 or 32x32
    image in every logit, so it judges global shape, which the reconstruction loss already
    pins down, and gives one verdict per image. One layer (16 px patches) at 28-32 px, two
    (34 px) at 64 px and three (70 px) from 117 px on keep every logit on a local patch,
    where blur is: many verdicts per image on texture and edges.
    """
    side = min(image_size)
    n = 1
    while n < MAX_DISC_LAYERS and receptive_field(n + 1) <= 0.6 * side:
        n += 1
    return n


def disc_width_for(image_size: tuple[int, int]) -> int:
    """Channels of the PatchGAN's first layer for images of ``image_size`` (H, W): 16 when
    the smaller side is at most 32 px, else 64 (pix2pix / VQGAN).

    Why: at 28-32 px the discriminator has one stride-2 layer, so its second convolution
    runs at half the image size: 64 wide it costs about five times the VQ-VAE's own
    forward and backward (one CPU thread, batch 64 of 28x28: 234 ms per VQ-GAN step
    against 37 ms for the VQ-VAE; 58 ms 16 wide). On mnist5k at the same wall-clock budget
    the 16-wide one finishes the preset's schedule and scored better
    (docs/stage-one-family.md); larger images keep the published width (not measured here).
    """
    return SMALL_DISC_WIDTH if min(image_size) <= SMALL_IMAGE_SIDE else DISC_WIDTH


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix): images (B, C, H, W) in [0, 1] -> logits (B, 1, h', w'), one per patch.

    ``num_layers`` stride-2 4x4 convolutions (width doubling up to 8 x ``width``), one
    stride-1 4x4 convolution and a 4x4 convolution to one channel; LeakyReLU(0.2). GroupNorm
    instead of the original BatchNorm: it normalises each image on its own, so logits do not
    depend on the batch's other images, DDP ranks need no synced statistics, and the real
    and fake passes do not mix running statistics.
    """

    def __init__(self, in_channels: int, width: int = 64, num_layers: int = 1) -> None:
        super().__init__()
        if not 1 <= num_layers <= MAX_DISC_LAYERS + 2:
            raise UserError(f"discriminator layers must be in 1..{MAX_DISC_LAYERS + 2}, got {num_layers}")
        blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, width, 4, 2, 1),
                                                 nn.LeakyReLU(0.2))]
        ch = width
        for i in range(1, num_layers + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < num_layers else 1
            blocks.append(nn.Sequential(nn.Conv2d(ch, out, 4, stride, 1, bias=False),
                                        nn.GroupNorm(_groups(out), out), nn.LeakyReLU(0.2)))
            ch = out
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(ch, 1, 4, 1, 1)
        self.num_layers = num_layers

    def forward(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """-> (logits (B, 1, h', w'), intermediate features of every block)."""
        x = images - 0.5
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return self.head(x), feats


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


def frozen_forward(disc: nn.Module, images: Tensor) -> tuple[Tensor, list[Tensor]]:
    """``disc(images)`` with the discriminator's parameters detached: the gradient reaches
    ``images`` (the generator) but none reaches the discriminator. This lets one backward
    pass carry the generator's and the discriminator's losses at once, so every parameter
    gets exactly one gradient per step (what DDP without unused-parameter search needs)."""
    params = {n: p.detach() for n, p in disc.named_parameters()}
    return functional_call(disc, params, (images,))


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss: 0.5 (mean relu(1 - real) + mean relu(1 + fake)); >= 0,
    zero once real logits are >= 1 and fake ones <= -1."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """Generator's adversarial loss under the hinge GAN: -mean(logits of the fakes)."""
    return -logits_fake.float().mean()


def feature_matching_loss(feats_fake: list[Tensor], feats_real: list[Tensor]) -> Tensor:
    """Mean over the discriminator's blocks of the L1 distance between the features of the
    reconstructions and of the originals (the real ones detached: only the generator learns)."""
    if len(feats_fake) != len(feats_real) or not feats_fake:
        raise ValueError(f"need the same non-zero number of feature maps, got "
                         f"{len(feats_fake)} and {len(feats_real)}")
    terms = [F.l1_loss(f.float(), r.detach().float()) for f, r in zip(feats_fake, feats_real, strict=True)]
    return torch.stack(terms).mean()


def adaptive_weight(nll_loss: Tensor, g_loss: Tensor, last_layer: Tensor, *,
                    max_weight: float = 1e4, eps: float = 1e-4) -> Tensor:
    """VQGAN's balance of the adversarial term: ||d nll / d W|| / (||d g_loss / d W|| + eps),
    clamped to [0, max_weight] and detached, where W is the decoder's last layer weight.

    Both gradients are taken with ``retain_graph=True`` and without accumulating into
    ``.grad`` (the caller's backward pass still runs on the same graph). Norms in float32.
    """
    g_nll = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = g_nll.float().norm() / (g_adv.float().norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


# ----------------------------------------------------------------------------- LPIPS


def lpips_backbone_path() -> Path:
    """Where torchvision (and so ``lpips``) looks for the VGG16 ImageNet weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILE


def load_lpips() -> nn.Module:
    """The ``lpips`` package's VGG LPIPS, frozen, in eval mode. No download: raises a
    one-line :class:`MissingInputError` naming the file to place (or the package to
    install) when it is not available offline."""
    path = lpips_backbone_path()
    if importlib.util.find_spec("lpips") is None:
        raise MissingInputError(
            f"--perceptual lpips needs the lpips package (pip install lpips) and the VGG16 "
            f"weights at {path}; or use --perceptual features (no download)")
    if not path.is_file():
        raise MissingInputError(
            f"--perceptual lpips needs the VGG16 ImageNet weights at {path} (torchvision's "
            f"{LPIPS_BACKBONE_FILE}; copy it there) or --perceptual features (no download)")
    import lpips  # noqa: PLC0415  # pyright: ignore[reportMissingImports] - optional dependency

    net = lpips.LPIPS(net="vgg", verbose=False).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def lpips_loss(net: nn.Module, fake: Tensor, real: Tensor) -> Tensor:
    """Mean LPIPS between images in [0, 1] (grey images repeated to 3 channels)."""
    if fake.shape[1] == 1:
        fake, real = fake.expand(-1, 3, -1, -1), real.expand(-1, 3, -1, -1)
    return net(fake.float() * 2 - 1, real.float() * 2 - 1).mean()
