"""Model registry, architectures, activation/slot hooks and the AutoAttack checkpoint interop."""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustact import build_model
from robustact.errors import ConfigError, RobustactError
from robustact.models import list_models, make_activation, register_activation
from robustact.models.activations import ACTIVATIONS


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread: these forwards are small, and on a busy 2-core machine idle OpenMP workers spinning at
    barriers made the suite 2-3x slower. Restores the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Reduced configurations keep the suite fast on a small CPU; the full-size WRNs are only counted.
SMALL = {
    "resnet18": {},
    "resnet34": {"width": 16},
    "resnet_small": {},
    "preact_resnet18": {"width": 16},
    "wideresnet": {"depth": 10, "widen_factor": 2},
    "vgg16": {},
}
# Slots per arch (attribute paths), each must be on the forward path.
SLOTS = {
    "resnet18": ["layer1.0.site", "layer4.0.site", "layer4.1.site"],
    "resnet_small": ["layer4.0.site", "layer4.1.site"],
    "preact_resnet18": ["layer4.0.site", "layer4.1.site", "final_site"],
    "wideresnet": ["block1.layer.0.pre_site", "block3.layer.0.pre_site", "block3.layer.0.site", "final_site"],
    "vgg16": ["slots.0.0", "slots.4.0", "slots.4.1", "slots.4.2"],
}


def _small(arch: str, **kw) -> nn.Module:
    return build_model(arch, **{**SMALL[arch], **kw}).eval()


def _nparams(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward, counted on Conv2d and Linear layers."""
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        total += out.numel() * k

    def linear_hook(m: nn.Linear, inp, out) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.inference_mode():
        model(x)
    for h in handles:
        h.remove()
    return total


class _Halve(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * 0.5


class _Zero(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(z)


# ---------------------------------------------------------------- registry and shapes


def test_registry_lists_all_archs():
    expected = {"resnet18", "resnet34", "resnet_small", "preact_resnet18", "vgg16"}
    assert set(list_models()) >= expected | {"wideresnet", "wrn34_10", "wrn28_10"}


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("arch", sorted(SMALL))
def test_arch_maps_images_to_logits(arch: str, num_classes: int):
    model = _small(arch, num_classes=num_classes)
    with torch.inference_mode():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    assert model.arch == arch and model.num_classes == num_classes


@pytest.mark.parametrize("arch", ["wrn34_10", "wrn28_10"])
def test_full_wrn_builds_for_100_classes(arch: str):
    model = build_model(arch, num_classes=100)
    assert model.classifier_layer().out_features == 100 and model.penultimate_dim == 640


def test_parameter_counts_match_the_literature():
    assert _nparams(build_model("resnet18")) == 11_173_962  # 11.17M
    assert abs(_nparams(build_model("wrn34_10")) - 46.2e6) < 0.1e6  # 46.16M


def test_build_kwargs_rebuild_the_same_model():
    model = build_model(
        "wideresnet",
        num_classes=7,
        activation="silu",
        normalize=((0.5,) * 3, (0.25,) * 3),
        depth=10,
        widen_factor=1,
    )
    assert "arch" not in model.build_kwargs  # checkpoints store `model.arch` beside them
    again = build_model(model.arch, **model.build_kwargs)
    assert model.build_kwargs == again.build_kwargs
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in again.state_dict().items()}
    assert torch.equal(again.input_std, model.input_std)


def test_resnet_small_is_at_least_8x_cheaper_than_resnet18():
    x = torch.rand(1, 3, 32, 32)
    big, small = build_model("resnet18").eval(), build_model("resnet_small").eval()
    assert _macs(big, x) >= 8 * _macs(small, x)
    assert _nparams(big) >= 8 * _nparams(small)


@pytest.mark.parametrize("size", [48, 64])
@pytest.mark.parametrize("arch", ["resnet_small", "resnet34", "preact_resnet18", "wideresnet", "vgg16"])
def test_other_image_sizes(arch: str, size: int):
    with torch.inference_mode():
        assert _small(arch)(torch.rand(2, 3, size, size)).shape == (2, 10)


def test_features_and_classifier_layer():
    for arch, dim in [("resnet18", 512), ("resnet_small", 128), ("wideresnet", 128), ("vgg16", 512)]:
        model = _small(arch)
        x = torch.rand(2, 3, 32, 32)
        with torch.inference_mode():
            feats = model.features(x)
            assert feats.shape == (2, model.penultimate_dim) and model.penultimate_dim == dim
            assert torch.allclose(model.classifier_layer()(feats), model(x))
        assert isinstance(model.classifier_layer(), nn.Linear)


def test_input_gradients_flow():
    model = _small("resnet_small")
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ---------------------------------------------------------------- normalisation


def test_normalization_lives_in_non_persistent_buffers():
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    plain = build_model("resnet_small").eval()
    normed = build_model("resnet_small", normalize=(mean, std)).eval()
    assert list(normed.state_dict()) == list(plain.state_dict())
    normed.load_state_dict(plain.state_dict(), strict=True)
    x = torch.rand(2, 3, 32, 32)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.inference_mode():
        assert torch.allclose(normed(x), plain((x - m) / s), atol=1e-5)
    assert normed.build_kwargs["normalize"] == [list(mean), list(std)]


def test_bad_normalization_is_a_config_error():
    with pytest.raises(ConfigError, match="std"):
        build_model("resnet_small", normalize=((0.5,) * 3, (0.0,) * 3))
    with pytest.raises(ConfigError, match="3 numbers"):
        build_model("resnet_small", normalize=((0.5, 0.5), (0.2, 0.2)))


# ---------------------------------------------------------------- activations


def test_make_activation_returns_new_modules():
    for name in ["relu", "silu", "softplus", "gelu", "elu"]:
        a, b = make_activation(name, 8), make_activation(name, 8)
        assert isinstance(a, nn.Module) and a is not b
    assert not make_activation("relu", 8).inplace


def test_activation_choice_changes_module_types():
    relu = _small("resnet_small")
    silu = _small("resnet_small", activation="silu")
    n_relu = sum(isinstance(m, nn.ReLU) for m in relu.modules())
    assert n_relu == 17  # stem + 2 per block
    assert sum(isinstance(m, nn.SiLU) for m in silu.modules()) == n_relu
    assert not any(isinstance(m, nn.ReLU) for m in silu.modules())
    assert list(silu.state_dict()) == list(relu.state_dict())


class _Marker(nn.Module):
    """A stand-in for a parametric activation: records its channel count and its calls."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.calls = 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        assert z.shape[1] == self.channels
        self.calls += 1
        return torch.relu(z)


@pytest.fixture
def marker_activation():
    register_activation("test_marker")(_Marker)
    yield "test_marker"
    ACTIVATIONS.unregister("test_marker")


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_registered_activation_reaches_every_site(arch: str, marker_activation: str):
    model = _small(arch, activation=marker_activation)
    with torch.inference_mode():
        model(torch.rand(1, 3, 32, 32))
    markers = [m for m in model.modules() if isinstance(m, _Marker)]
    assert markers and all(m.calls == 1 for m in markers)
    assert len({id(m) for m in markers}) == len(markers)
    builtin = (nn.ReLU, nn.SiLU, nn.Softplus, nn.GELU, nn.ELU)
    assert not any(isinstance(m, builtin) for m in model.modules())


# ---------------------------------------------------------------- errors


def test_unknown_names_are_config_errors():
    with pytest.raises(ConfigError, match="unknown arch 'resnet19'; known: .*resnet18"):
        build_model("resnet19")
    with pytest.raises(ConfigError, match="unknown activation 'mish'; known: elu, gelu, .*relu"):
        build_model("resnet18", activation="mish")
    with pytest.raises(ConfigError, match="unknown activation"):
        make_activation("mish", 4)
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("resnet18", num_classes=1)
    with pytest.raises(ConfigError, match="does not take width"):
        build_model("vgg16", width=32)
    with pytest.raises(ConfigError, match="depth must be 6n"):
        build_model("wideresnet", depth=12)
    with pytest.raises(ConfigError, match="unknown defense 'nope'; known: none, cas"):
        build_model("resnet_small", defense="nope")
    with pytest.raises(ConfigError, match="frobnicate"):  # non-arch kwargs go to the defense, which checks them
        build_model("resnet_small", defense="cas", frobnicate=2.0)
    assert build_model("resnet_small", defense="none").build_kwargs["defense"] is None


def test_bad_input_shape_is_one_clear_error():
    with pytest.raises(RobustactError, match=r"\(N, 3, H, W\)"):
        _small("resnet_small")(torch.rand(3, 32, 32))


# ---------------------------------------------------------------- defense slots


@pytest.mark.parametrize("arch,path", [(a, p) for a, paths in SLOTS.items() for p in paths])
def test_slots_are_on_the_forward_path(arch: str, path: str):
    model = _small(arch)
    x = torch.rand(2, 3, 32, 32)
    keys = list(model.state_dict())
    assert isinstance(model.get_submodule(path), nn.Identity)
    with torch.inference_mode():
        before = model(x)
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent), name, _Halve())
        after = model(x)
    assert not torch.allclose(before, after)
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize("arch", sorted(SLOTS))
def test_slot_module_order_is_forward_order(arch: str):
    """`robustact.defenses.sites` lists sites in module order: that must be the order they run in."""
    model = _small(arch)
    slots = [n for n, m in model.named_modules() if isinstance(m, nn.Identity)]
    called: list[str] = []
    for n in slots:
        model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: called.append(n))
    with torch.inference_mode():
        model(torch.rand(1, 3, 32, 32))
    assert called == slots


def test_vgg_last_stage_has_three_slots():
    model = build_model("vgg16")
    assert [len(s) for s in model.slots] == [2, 2, 3, 3, 3]


def test_wrn_pre_site_feeds_only_the_residual_branch():
    # Fresh BN in eval mode maps 0 to 0, so a zeroed residual input gives a zero residual branch.
    model = build_model("wideresnet", depth=16, widen_factor=2).eval()
    equal, widening = model.block1.layer[1], model.block2.layer[0]
    x1, x2 = torch.rand(2, 32, 8, 8), torch.rand(2, 32, 8, 8)
    with torch.inference_mode():
        equal.pre_site = _Zero()
        assert torch.allclose(equal(x1), x1)  # identity shortcut keeps the raw input
        widening.pre_site = _Zero()
        expected = widening.convShortcut(widening.relu1(widening.bn1(x2)))
        assert torch.allclose(widening(x2), expected)  # 1x1 shortcut keeps the unmasked pre-activation


# ---------------------------------------------------------------- interop: AutoAttack's model_test.pt


def _autoattack_checkpoint() -> Path:
    spec = importlib.util.find_spec("pyautoattack")
    if spec is None or spec.origin is None:
        pytest.skip("pyautoattack is not installed")
    path = Path(spec.origin).parent / "examples" / "model_test.pt"
    if not path.is_file():
        pytest.skip(f"{path} not shipped with this pyautoattack")
    return path


class _CifarUnpickler(pickle.Unpickler):
    """Reads a CIFAR-10 python batch and refuses any other object (nothing arbitrary is unpickled)."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name} in a CIFAR batch")
        return super().find_class(module, name)


def _cifar10_test(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    root = Path(os.environ.get("ROBUSTACT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    path = root / "cifar-10-batches-py" / "test_batch"
    if not path.is_file():
        pytest.skip(f"CIFAR-10 test batch not found at {path} (set ROBUSTACT_DATA)")
    with open(path, "rb") as f:
        batch = _CifarUnpickler(f, encoding="latin1").load()
    x = np.asarray(batch["data"][:n], dtype=np.uint8).reshape(n, 3, 32, 32)
    return torch.from_numpy(x).float().div_(255), torch.tensor(batch["labels"][:n])


def test_autoattack_model_test_checkpoint_loads_and_is_accurate():
    state = torch.load(_autoattack_checkpoint(), weights_only=True, map_location="cpu")
    model = build_model("resnet18")
    model.load_state_dict(state, strict=True)
    model.eval()
    x, y = _cifar10_test(1000)  # AutoAttack's eval.py feeds raw [0, 1] tensors: no normalisation
    with torch.inference_mode():
        pred = torch.cat([model(xb).argmax(1) for xb in x.split(250)])
    accuracy = (pred == y).float().mean().item()
    assert accuracy >= 0.93, f"model_test.pt accuracy {accuracy:.3f} on test images 0-999"
