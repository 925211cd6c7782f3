"""Building blocks shared by every architecture: the activation registry and the classifier base class.

Every nonlinearity of every network is made by `make_activation`, so a new activation (PSSiLU, Sparta)
is one `register_activation` call in its own module and reaches all architectures without editing them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from robustact.errors import ConfigError, RobustactError

ActivationFactory = Callable[[int], nn.Module]

_ACTIVATIONS: dict[str, ActivationFactory] = {}


def register_activation(name: str) -> Callable[[ActivationFactory], ActivationFactory]:
    """Register `factory(channels) -> nn.Module` under `name`; it must build a new module per call."""
    key = name.lower()

    def decorator(factory: ActivationFactory) -> ActivationFactory:
        if key in _ACTIVATIONS:
            raise ValueError(f"activation {key!r} is already registered")
        _ACTIVATIONS[key] = factory
        return factory

    return decorator


def list_activations() -> list[str]:
    """The registered activation names, sorted."""
    return sorted(_ACTIVATIONS)


def check_activation(name: str) -> str:
    """The canonical (lower-case) name, or ConfigError naming the known ones."""
    key = name.lower() if isinstance(name, str) else None
    if key not in _ACTIVATIONS:
        names = list_activations()
        base = [n for n in names if "_" not in n]  # variants (sparta_shared_k5_b4, ...) would drown the line
        extra = len(names) - len(base)
        variants = f", and {extra} variants like {max(names, key=len)}" if extra else ""
        raise ConfigError(f"unknown activation {name!r}; known: {', '.join(base)}{variants}")
    return key


def make_activation(name: str, channels: int) -> nn.Module:
    """A fresh activation module for one site with `channels` channels (each site owns its parameters)."""
    return _ACTIVATIONS[check_activation(name)](channels)


# Built-ins. `inplace=False` everywhere: in-place activations break double backprop (CIFS) and hooks.
@register_activation("relu")
def _relu(channels: int) -> nn.Module:
    return nn.ReLU(inplace=False)


@register_activation("silu")
def _silu(channels: int) -> nn.Module:
    return nn.SiLU(inplace=False)


@register_activation("softplus")
def _softplus(channels: int) -> nn.Module:
    return nn.Softplus()


@register_activation("gelu")
def _gelu(channels: int) -> nn.Module:
    return nn.GELU()


@register_activation("elu")
def _elu(channels: int) -> nn.Module:
    return nn.ELU(inplace=False)


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


def make_stages(block: type[nn.Module], in_planes: int, widths: list[int], num_blocks, activation: str,
                strides=(1, 2, 2, 2)) -> list[nn.Sequential]:
    """The four residual stages of a CIFAR ResNet (`layer1..layer4`): `block(in, out, stride, activation)`."""
    stages = []
    for planes, blocks, stride in zip(widths, num_blocks, strides):
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(block(in_planes, planes, s, activation))
            in_planes = planes
        stages.append(nn.Sequential(*layers))
    return stages
