"""Pre-activation ResNet-18 with the fast-AT (Wong et al. 2020) / kuangliu parameter names.

Blocks are `bn1, conv1, bn2, conv2, shortcut` (the projection shortcut is a bare 1x1 conv, `shortcut.0`); the
network ends in `bn` + activation + `linear`. Two published variants differ only in the forward, not in the
parameters, so they are options rather than architectures:

- `shortcut`: what the 1x1 projection shortcut sees. "preact" (default): the pre-activated input `act(bn1(x))`,
  as kuangliu's PreActBlock and RobustBench's `PreActBlockV2`. "input": the raw block input `x`, as RobustBench's
  `PreActBlock` (Wong et al. 2020 fast AT, RobustBench `Wong2020Fast`). Identity shortcuts are `x` in both.
- `final_bn`: True (default) ends the network in `bn` + activation before pooling; False pools layer4's output
  directly, with no `bn.*` keys (RobustBench `PreActResNet(bn_before_fc=False)`, as `Wong2020Fast`).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from robustact.errors import ConfigError
from robustact.models.activations import make_activation
from robustact.models.layers import ImageClassifier, add_resnet_trunk, global_pool
from robustact.models.registry import register_model
from robustact.models.resnet import ResNet

SHORTCUTS = ("preact", "input")


def check_shortcut(shortcut: str) -> str:
    """The shortcut mode, or one ConfigError line naming the choices (a typo must not silently pick one)."""
    if shortcut not in SHORTCUTS:
        raise ConfigError(f"preact_resnet shortcut must be one of {', '.join(SHORTCUTS)}, got {shortcut!r}")
    return shortcut


class PreActBlock(nn.Module):
    """bn-act-conv-bn-act-conv + shortcut; `site` sees the block output after the residual add.

    `shortcut` is "preact" (the projection sees `act(bn1(x))`) or "input" (it sees the raw `x`)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, activation: str = "relu",
                 shortcut: str = "preact") -> None:
        super().__init__()
        self.shortcut_input = check_shortcut(shortcut) == "input"
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act1 = make_activation(activation, in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = make_activation(activation, planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        # Empty when the shortcut is the identity on the *raw* input (fast-AT omits the attribute then).
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)
            )
        self.site = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        if len(self.shortcut) == 0:
            shortcut = x
        else:
            shortcut = self.shortcut(x if self.shortcut_input else out)
        out = self.conv1(out)
        out = self.conv2(self.act2(self.bn2(out)))
        return self.site(out + shortcut)


class PreActResNet(ResNet):
    """Stem conv, four PreAct stages, final bn-act (unless `final_bn=False`); `final_site` sees what is pooled."""

    block = PreActBlock
    stem_norm = False

    def __init__(self, num_blocks: tuple[int, int, int, int], num_classes: int = 10, activation: str = "relu",
                 width: int = 64, shortcut: str = "preact", final_bn: bool = True) -> None:
        # ResNet.__init__ builds blocks with four arguments; the shortcut mode needs a fifth, so the trunk is
        # built here (same order of registration, hence the same state_dict order).
        ImageClassifier.__init__(self)
        self.final_bn = bool(final_bn)
        block = partial(self.block, shortcut=check_shortcut(shortcut))
        out = add_resnet_trunk(self, block, width, num_blocks, activation, stem_norm=self.stem_norm)
        self.add_head(out, num_classes, activation)

    def add_head(self, channels: int, num_classes: int, activation: str) -> None:
        if self.final_bn:
            self.bn = nn.BatchNorm2d(channels)
            self.act = make_activation(activation, channels)
        self.final_site = nn.Identity()
        self.linear = nn.Linear(channels, num_classes)

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.final_bn:
            out = self.act(self.bn(out))
        return global_pool(self.final_site(out))


@register_model("preact_resnet18", family="preact_resnet")
def preact_resnet18(num_classes: int = 10, activation: str = "relu", width: int = 64, shortcut: str = "preact",
                    final_bn: bool = True) -> PreActResNet:
    """PreAct ResNet-18 (fast-AT naming). Defaults are kuangliu's / RobustBench's `PreActBlockV2` network;
    `shortcut="input", final_bn=False` is RobustBench's `PreActBlock` + `bn_before_fc=False` (`Wong2020Fast`)."""
    return PreActResNet((2, 2, 2, 2), num_classes, activation, width, shortcut, final_bn)
