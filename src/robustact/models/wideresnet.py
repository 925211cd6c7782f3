"""WideResNet-depth-k with the TRADES / MART parameter names, so their checkpoints load strictly.

Names: `conv1, block1, block2, block3, bn1, relu, fc`; `block*.layer[i]` has `bn1, relu1, conv1, bn2,
relu2, conv2, convShortcut` (the last only where widths change). Dropout is 0, as in TRADES/MART.
TRADES' code also builds an unused `sub_block1`; pass `sub_block1=True` to load such a checkpoint.
`fc_bias=False` builds the final Linear without a bias (no `fc.bias` key), as RobustBench's WideResNet with
`bias_last=False`.

Slots: `pre_site` takes the block's BN-act pre-activated input and feeds **only the residual branch**
(`conv1`). Where widths change, the 1x1 `convShortcut` keeps the un-masked pre-activated input; where
they are equal the shortcut is the raw block input anyway. This is CAS's WRN placement: the mask acts
on the residual branch and the identity path stays untouched. `site` sees the block output (after the
residual add); `final_site` sees the final BN-act output before pooling.
"""

from __future__ import annotations

import torch
from torch import nn

from robustact.errors import ConfigError
from robustact.models.activations import make_activation
from robustact.models.layers import BlockGroup, ImageClassifier, global_pool, he_init
from robustact.models.registry import register_model


class WideBlock(nn.Module):
    """Pre-activation wide block: bn-act (-> pre_site) -> conv -> bn-act -> conv, + shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: str = "relu") -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = make_activation(activation, in_planes)
        self.pre_site = nn.Identity()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = make_activation(activation, out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )
        self.site = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        out = self.relu2(self.bn2(self.conv1(self.pre_site(pre))))
        out = self.conv2(out)
        return self.site(shortcut + out)


class WideResNet(ImageClassifier):
    """WRN-depth-k: three groups of (depth - 4) / 6 blocks at widths 16k, 32k, 64k."""

    def __init__(
        self,
        depth: int = 34,
        widen_factor: int = 10,
        num_classes: int = 10,
        activation: str = "relu",
        sub_block1: bool = False,
        fc_bias: bool = True,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ConfigError(f"WideResNet depth must be 6n + 4, n >= 1 (10, 16, 28, 34, ...), got {depth}")
        if widen_factor < 1:
            raise ConfigError(f"WideResNet widen_factor must be >= 1, got {widen_factor}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = BlockGroup("layer", WideBlock, n, ch[0], ch[1], 1, activation)
        if sub_block1:  # unused in forward; only so that TRADES-code checkpoints load with strict=True
            self.sub_block1 = BlockGroup("layer", WideBlock, n, ch[0], ch[1], 1, activation)
        self.block2 = BlockGroup("layer", WideBlock, n, ch[1], ch[2], 2, activation)
        self.block3 = BlockGroup("layer", WideBlock, n, ch[2], ch[3], 2, activation)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = make_activation(activation, ch[3])
        self.final_site = nn.Identity()
        self.fc = nn.Linear(ch[3], num_classes, bias=fc_bias)
        he_init(self)

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = self.final_site(self.relu(self.bn1(out)))
        return global_pool(out)

    def classifier_layer(self) -> nn.Linear:
        return self.fc


@register_model("wideresnet", family="wideresnet")
def wideresnet(
    num_classes: int = 10,
    activation: str = "relu",
    depth: int = 34,
    widen_factor: int = 10,
    sub_block1: bool = False,
    fc_bias: bool = True,
) -> WideResNet:
    """WRN of any depth 6n + 4 and width factor (small ones for tests and CPU runs); `fc_bias=False` is
    RobustBench's `bias_last=False`."""
    return WideResNet(depth, widen_factor, num_classes, activation, sub_block1, fc_bias)


@register_model("wrn34_10", family="wideresnet")
def wrn34_10(num_classes: int = 10, activation: str = "relu", sub_block1: bool = False,
             fc_bias: bool = True) -> WideResNet:
    """WRN-34-10 (46.2M parameters at K = 10): the TRADES / MART / CAS benchmark network."""
    return WideResNet(34, 10, num_classes, activation, sub_block1, fc_bias)


@register_model("wrn28_10", family="wideresnet")
def wrn28_10(num_classes: int = 10, activation: str = "relu", sub_block1: bool = False,
             fc_bias: bool = True) -> WideResNet:
    """WRN-28-10 (36.5M parameters at K = 10): the network of CIFS' official WRN code."""
    return WideResNet(28, 10, num_classes, activation, sub_block1, fc_bias)
