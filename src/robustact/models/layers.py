"""Building blocks shared by every architecture: the classifier base class, pooling and residual stages.
(Activations are built by `robustact.models.activations.make_activation`.)"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from robustact.errors import ConfigError, RobustactError
from robustact.models.activations import make_activation


def _as_channel_values(values: float | Sequence[float], channels: int, what: str) -> list[float]:
    if isinstance(values, (int, float)):
        return [float(values)] * channels
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(
            f"normalize {what} must be a number or {channels} numbers, got {values!r}"
        ) from None
    if len(out) != channels:
        raise ConfigError(f"normalize {what} needs {channels} values (one per channel), got {len(out)}")
    return out


class ImageClassifier(nn.Module):
    """Base of all architectures: `forward(x)` maps images in [0, 1] to logits and nothing else.

    Input normalisation lives here as non-persistent buffers, so the state_dict keys stay those of the
    community checkpoints. Subclasses implement `forward_pooled` (normalised input -> pooled penultimate
    features) and `classifier_layer`.
    """

    in_channels: int = 3

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("input_mean", None, persistent=False)
        self.register_buffer("input_std", None, persistent=False)

    def set_input_normalization(
        self, mean: float | Sequence[float] | None, std: float | Sequence[float] | None
    ) -> None:
        """Normalise inputs as `(x - mean) / std` inside the model; `None, None` removes it."""
        if mean is None and std is None:
            self.input_mean = None
            self.input_std = None
            return
        if mean is None or std is None:
            raise ConfigError("normalize needs both mean and std, e.g. normalize=((0.5,) * 3, (0.25,) * 3)")
        m = _as_channel_values(mean, self.in_channels, "mean")
        s = _as_channel_values(std, self.in_channels, "std")
        if min(s) <= 0:
            raise ConfigError(f"normalize std must be positive, got {s}")
        ref = next(self.parameters())
        self.input_mean = torch.tensor(m, dtype=ref.dtype, device=ref.device).view(1, -1, 1, 1)
        self.input_std = torch.tensor(s, dtype=ref.dtype, device=ref.device).view(1, -1, 1, 1)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise RobustactError(
                f"expected images of shape (N, {self.in_channels}, H, W) in [0, 1], got {tuple(x.shape)}"
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation (N, penultimate_dim): pooled, right before the final Linear."""
        self._check_input(x)
        if self.input_mean is not None:
            x = (x - self.input_mean) / self.input_std
        return self.forward_pooled(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier_layer()(self.features(x))

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def classifier_layer(self) -> nn.Linear:
        """The final Linear (penultimate -> K), for analysis code (e.g. CIFS relevance sorting)."""
        raise NotImplementedError

    @property
    def penultimate_dim(self) -> int:
        return self.classifier_layer().in_features


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """Adaptive average pooling to (N, C): any input size, unlike the usual `avg_pool2d(out, 4)`."""
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def add_resnet_trunk(model: nn.Module, block: type[nn.Module], width: int, num_blocks, activation,
                     stem_norm: bool) -> int:
    """Register a CIFAR ResNet trunk on `model`: the 3x3 stem `conv1` (+ `bn1`, `act` when `stem_norm`) and the
    stages `layer1..layer4` of `block(in, out, stride, activation)` at widths w, 2w, 4w, 8w, strides 1, 2, 2, 2.
    Returns the last stage's width. (The registration order is the parameters' order: keep it.)"""
    model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    if stem_norm:
        model.bn1 = nn.BatchNorm2d(width)
        model.act = make_activation(activation, width)
    in_planes = width
    for s, (blocks, stride) in enumerate(zip(num_blocks, (1, 2, 2, 2))):
        planes = width * 2 ** s
        layers = []
        for st in [stride] + [1] * (blocks - 1):
            layers.append(block(in_planes, planes, st, activation))
            in_planes = planes
        setattr(model, f"layer{s + 1}", nn.Sequential(*layers))
    return in_planes


class BlockGroup(nn.Module):
    """A group of `n` residual blocks `block(in, out, stride, activation)` — the first changes the width and has
    the stride, the rest keep both — in an `nn.Sequential` named `container`: a WideResNet group, whose container
    TRADES names `layer` and DeepMind `block` (the name is in every checkpoint key)."""

    def __init__(self, container: str, block, n: int, in_planes: int, out_planes: int, stride: int,
                 activation) -> None:
        super().__init__()
        self.container = container
        blocks = [block(in_planes, out_planes, stride, activation)]
        blocks += [block(out_planes, out_planes, 1, activation) for _ in range(n - 1)]
        self.add_module(container, nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.container)(x)


def he_init(model: nn.Module) -> None:
    """The WideResNets' init (TRADES/MART code): He-normal convolutions by fan-out, unit BatchNorm, zero Linear
    biases. (Checkpoints replace it; training from scratch uses it.)"""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
