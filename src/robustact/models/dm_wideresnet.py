"""DeepMind's WideResNet (Gowal et al. 2020 / Rebuffi et al. 2021) with its own parameter names, so the
checkpoints of the many RobustBench CIFAR entries built on it (RobustBench's `DMWideResNet`) load strictly.

Names: `init_conv`, `layer.{g}.block.{i}` with `batchnorm_0, relu_0, conv_0, batchnorm_1, relu_1, conv_1` and a
bias-free 1x1 `shortcut` where the width changes, then `batchnorm, relu, logits`. What differs from the TRADES WRN
(`wideresnet.py`) and matters for a strict, exact port:

- `conv_0` has no padding of its own: the block pads its input first, (1, 1, 1, 1) at stride 1 and TensorFlow
  'SAME' (0, 1, 0, 1) at stride 2, so strided convs sample other pixels than a padding=1 conv would.
- The `padding` option zero-pads the [0, 1] image *before* normalisation (the padded pixels are -mean/std).
- Pooling is literally `avg_pool2d(out, 8)`, not a global mean: with padding the last map is larger than 8x8 (9x9
  for padding 2 on 32x32) and only its top-left 8x8 window is averaged.
- The input normalisation (CIFAR-10's mean/std) is part of the architecture's default (`normalize="cifar10"`) and,
  as in DeepMind's code, not in the state_dict.

Slots: each block's `site` sees its output after the residual add; `final_site` the final BN-act output. No
defense is placed on this family (`robustact.defenses.placement` has no rows for it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustact.errors import ConfigError, RobustactError
from robustact.models.activations import make_activation
from robustact.models.layers import BlockGroup, ImageClassifier, he_init
from robustact.models.registry import register_model

POOL = 8  # DeepMind's avg_pool2d kernel (and stride)


class DMBlock(nn.Module):
    """Pre-activation block with explicit padding; with a shortcut conv, the shortcut sees the pre-activated
    input, without one the raw input (DeepMind's `_Block`)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: str = "relu") -> None:
        super().__init__()
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = make_activation(activation, in_planes)
        self.conv_0 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = make_activation(activation, out_planes)
        self.conv_1 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = (
            nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
            if self.has_shortcut else None
        )
        self.stride = stride
        self.site = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu_0(self.batchnorm_0(x))
        if self.has_shortcut:
            x = pre  # DeepMind overwrites x: the projection shortcut sees the pre-activated input
        # stride 1: symmetric; stride 2: TensorFlow 'SAME' (right/bottom only)
        pad = (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1)
        out = self.conv_0(F.pad(pre, pad))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        shortcut = self.shortcut(x) if self.has_shortcut else x
        return self.site(shortcut + out)


def check_dm_options(depth: int, width: int, padding: int) -> None:
    """One ConfigError line for options DeepMind's construction cannot honour."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ConfigError(f"dm_wideresnet depth must be 6n + 4, n >= 1 (10, 16, 28, 70, ...), got {depth}")
    if width < 1:
        raise ConfigError(f"dm_wideresnet width must be >= 1, got {width}")
    if padding < 0:
        raise ConfigError(f"dm_wideresnet padding must be >= 0 (pixels added on each side), got {padding}")


class DMWideResNet(ImageClassifier):
    """WRN-depth-width in DeepMind's layout: three groups of (depth - 4) / 6 blocks at widths 16w, 32w, 64w."""

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10, activation: str = "relu",
                 padding: int = 0) -> None:
        super().__init__()
        check_dm_options(depth, width, padding)
        n = (depth - 4) // 6
        ch = [16, 16 * width, 32 * width, 64 * width]
        self.padding = padding
        self.num_channels = ch[3]
        self.init_conv = nn.Conv2d(3, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(*[BlockGroup("block", DMBlock, n, ch[g], ch[g + 1], stride, activation)
                                     for g, stride in enumerate((1, 2, 2))])
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.relu = make_activation(activation, ch[3])
        self.final_site = nn.Identity()
        self.logits = nn.Linear(ch[3], num_classes)
        he_init(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """As `ImageClassifier.features`, but DeepMind pads the [0, 1] image before normalising it."""
        self._check_input(x)
        if self.padding > 0:
            x = F.pad(x, (self.padding,) * 4)
        if self.input_mean is not None:
            x = (x - self.input_mean) / self.input_std
        return self.forward_pooled(x)

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(self.init_conv(x))
        out = self.final_site(self.relu(self.batchnorm(out)))
        out = F.avg_pool2d(out, POOL)  # literally DeepMind's: one 8x8 window, not a global mean
        if out.shape[-2:] != (1, 1):
            # DeepMind's view(-1, C) would then fold positions into the batch; refuse instead of mixing examples.
            raise RobustactError(f"dm_wideresnet pools one {POOL}x{POOL} window; the last feature map is "
                                 f"{tuple(out.shape[-2:])} windows for this input size (CIFAR-sized inputs only)")
        return out.view(-1, self.num_channels)

    def classifier_layer(self) -> nn.Linear:
        return self.logits


@register_model("dm_wideresnet", family="dm_wideresnet", normalize="cifar10")
def dm_wideresnet(num_classes: int = 10, activation: str = "relu", depth: int = 28, width: int = 10,
                  padding: int = 0) -> DMWideResNet:
    """DeepMind's WRN of any depth 6n + 4 and width (small ones for tests); `padding` pixels of zero-padding
    on the input, as some RobustBench entries use (Rebuffi et al. 2021)."""
    return DMWideResNet(depth, width, num_classes, activation, padding)


@register_model("dm_wrn28_10", family="dm_wideresnet", normalize="cifar10")
def dm_wrn28_10(num_classes: int = 10, activation: str = "relu", padding: int = 0) -> DMWideResNet:
    """DeepMind's WRN-28-10 (36.5M parameters at K = 10)."""
    return DMWideResNet(28, 10, num_classes, activation, padding)


@register_model("dm_wrn70_16", family="dm_wideresnet", normalize="cifar10")
def dm_wrn70_16(num_classes: int = 10, activation: str = "relu", padding: int = 0) -> DMWideResNet:
    """DeepMind's WRN-70-16 (266.8M parameters at K = 10): the top RobustBench CIFAR-10 entries' network."""
    return DMWideResNet(70, 16, num_classes, activation, padding)
