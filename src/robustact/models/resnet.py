"""CIFAR ResNets (3x3 stem, no max-pool) with the kuangliu/pytorch-cifar parameter names.

Those names (`conv1, bn1, layer1..layer4, linear`; blocks `conv1, bn1, conv2, bn2, shortcut`) are what
most community CIFAR checkpoints use, AutoAttack's `model_test.pt` included, so they load strictly.
Activations and `site` slots hold no parameters, so they add no state_dict keys.
"""

from __future__ import annotations

import torch
from torch import nn

from robustact.models.activations import make_activation
from robustact.models.layers import ImageClassifier, add_resnet_trunk, global_pool
from robustact.models.registry import register_model


class BasicBlock(nn.Module):
    """conv-bn-act-conv-bn + shortcut, act; `site` sees the block's post-activation output (CAS/CIFS)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, activation: str = "relu") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = make_activation(activation, planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        self.act2 = make_activation(activation, planes)
        self.site = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.act2(out + self.shortcut(x))  # not `+=`: keeps autograd safe for any activation
        return self.site(out)


class ResNet(ImageClassifier):
    """Four stages of BasicBlocks at strides 1, 2, 2, 2 and widths w, 2w, 4w, 8w. Subclasses change the block,
    the stem (`stem_norm`) and what follows the last stage (`add_head`)."""

    block: type[nn.Module] = BasicBlock
    stem_norm = True

    def __init__(self, num_blocks: tuple[int, int, int, int], num_classes: int = 10, activation: str = "relu",
                 width: int = 64) -> None:
        super().__init__()
        out = add_resnet_trunk(self, self.block, width, num_blocks, activation, stem_norm=self.stem_norm)
        self.add_head(out, num_classes, activation)

    def add_head(self, channels: int, num_classes: int, activation: str) -> None:
        self.linear = nn.Linear(channels, num_classes)

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return global_pool(out)

    def classifier_layer(self) -> nn.Linear:
        return self.linear


@register_model("resnet18", family="resnet")
def resnet18(num_classes: int = 10, activation: str = "relu", width: int = 64) -> ResNet:
    """ResNet-18, CIFAR stem (11.17M parameters at K = 10)."""
    return ResNet((2, 2, 2, 2), num_classes, activation, width)


@register_model("resnet34", family="resnet")
def resnet34(num_classes: int = 10, activation: str = "relu", width: int = 64) -> ResNet:
    """ResNet-34, CIFAR stem; same stage widths as ResNet-18 (Sparta transfer maps stage by stage)."""
    return ResNet((3, 4, 6, 3), num_classes, activation, width)


@register_model("resnet_small", family="resnet")
def resnet_small(num_classes: int = 10, activation: str = "relu", width: int = 16) -> ResNet:
    """ResNet-18's shape at widths 16-32-64-128: about 1/16 of its FLOPs, for CPU runs and tests."""
    return ResNet((2, 2, 2, 2), num_classes, activation, width)
