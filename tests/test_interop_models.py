"""Interop variants of published architectures: each against an independent functional reference.

The references below are written with torch.nn.functional ops only, read every tensor from `model.state_dict()`
by key name, and follow the published code's forward (RobustBench's `PreActBlock` / `PreActResNet(bn_before_fc=
False)` for fast AT; DeepMind's `DMWideResNet`). Weights and BatchNorm statistics are random, so that a wrong
shortcut input, a missing BN or a wrong padding shows up in the logits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustact import build_model
from robustact.errors import ConfigError, RobustactError
from robustact.models import create_model
from robustact.models.registry import arch_options

CIFAR10 = [[0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]]


@pytest.fixture(autouse=True)
def _seeded_one_thread():
    """Seeded, one thread: these forwards are tiny and the machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(before)


def _randomize(model: nn.Module, seed: int = 1) -> nn.Module:
    """Random BN affine parameters and running stats, random Linear bias: with BN at its init (identity in eval
    mode) a reference that skipped or misplaced a BN would still agree."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.randn(m.out_features, generator=g) * 0.1)
    return model.eval()


def _bn(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                        sd[f"{name}.bias"], training=False, eps=1e-5)


def _record(model: nn.Module, *paths: str) -> dict[str, torch.Tensor]:
    """The outputs of the named submodules on the next forward (the hooks return None: outputs unchanged)."""
    seen: dict[str, torch.Tensor] = {}
    for path in paths:
        def hook(m, inputs, output, path=path) -> None:
            seen[path] = output
        model.get_submodule(path).register_forward_hook(hook)
    return seen


# ---------------------------------------------------------------------------------------------- PreAct ResNet-18

def _fast_at_reference(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """RobustBench `PreActResNet(PreActBlock, [2, 2, 2, 2], bn_before_fc=False)`: the projection shortcut convolves
    the RAW block input; no final bn/relu; avg_pool2d(out, 4) on the 4x4 map of a 32x32 image."""
    out = F.conv2d(x, sd["conv1.weight"], padding=1)
    for stage in range(1, 5):
        for i in range(2):
            p = f"layer{stage}.{i}"
            stride = 2 if stage > 1 and i == 0 else 1
            pre = F.relu(_bn(out, sd, f"{p}.bn1"))
            key = f"{p}.shortcut.0.weight"
            shortcut = F.conv2d(out, sd[key], stride=stride) if key in sd else out
            branch = F.conv2d(pre, sd[f"{p}.conv1.weight"], stride=stride, padding=1)
            branch = F.conv2d(F.relu(_bn(branch, sd, f"{p}.bn2")), sd[f"{p}.conv2.weight"], padding=1)
            out = branch + shortcut
    out = F.avg_pool2d(out, 4).view(out.size(0), -1)
    return F.linear(out, sd["linear.weight"], sd["linear.bias"])


def _preact(**kw) -> nn.Module:
    return _randomize(create_model("preact_resnet18", width=4, **kw))


def test_preact_input_shortcut_matches_fast_at_reference():
    model = _preact(shortcut="input", final_bn=False)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        got, want = model(x), _fast_at_reference(model.state_dict(), x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_preact_shortcut_option_changes_the_function():
    """Same weights, other shortcut input: other logits (and the reference tells them apart)."""
    raw = _preact(shortcut="input", final_bn=False)
    pre = create_model("preact_resnet18", width=4, shortcut="preact", final_bn=False).eval()
    pre.load_state_dict(raw.state_dict(), strict=True)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        a, b = raw(x), pre(x)
        ref = _fast_at_reference(raw.state_dict(), x)
    assert (a - b).abs().max() > 1e-3
    assert not torch.allclose(b, ref, atol=1e-5)


def _preact_keys(final_bn: bool) -> list[str]:
    """The fast-AT / kuangliu names, in order: stem, blocks (shortcut.0 on projection blocks), [bn], linear."""
    keys = ["conv1.weight"]
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    for stage in range(1, 5):
        for i in range(2):
            p = f"layer{stage}.{i}"
            keys += [f"{p}.bn1.{k}" for k in bn] + [f"{p}.conv1.weight"]
            keys += [f"{p}.bn2.{k}" for k in bn] + [f"{p}.conv2.weight"]
            keys += [f"{p}.shortcut.0.weight"] if stage > 1 and i == 0 else []
    keys += [f"bn.{k}" for k in bn] if final_bn else []
    return keys + ["linear.weight", "linear.bias"]


def test_preact_variant_keys():
    keys = {(s, f): list(create_model("preact_resnet18", width=4, shortcut=s, final_bn=f).state_dict())
            for s in ("preact", "input") for f in (True, False)}
    for (shortcut, final_bn), got in keys.items():
        assert got == _preact_keys(final_bn), (shortcut, final_bn)
    assert not any(k.startswith("bn.") for k in keys["input", False])
    assert keys["preact", True] == keys["input", True]  # the shortcut option changes no parameter


def test_preact_default_is_unchanged_and_final_site_sees_pooled_map():
    default = create_model("preact_resnet18", width=4)
    assert default.build_kwargs == {"num_classes": 10, "activation": "relu", "normalize": None, "width": 4}
    assert not default.layer2[0].shortcut_input and default.final_bn
    model = _preact(shortcut="input", final_bn=False)
    seen = _record(model, "final_site", "layer4")
    with torch.no_grad():
        model(torch.rand(2, 3, 32, 32))
    torch.testing.assert_close(seen["final_site"], seen["layer4"], atol=0, rtol=0)  # no bn/act in between


# ---------------------------------------------------------------------------------------------- DeepMind WRN

def _dm_reference(sd: dict, x: torch.Tensor, depth: int, padding: int, pool: str = "avg8") -> torch.Tensor:
    """DeepMind's DMWideResNet forward (activation Swish = x·σ(x)): pad the [0, 1] image, then normalise; blocks
    pad explicitly ((1,1,1,1) at stride 1, (0,1,0,1) at stride 2); a shortcut conv sees the pre-activated input;
    avg_pool2d(out, 8), view(-1, C). `pool="global"` is the wrong pooling, to show the test can tell."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in CIFAR10)
    if padding > 0:
        x = F.pad(x, (padding,) * 4)
    out = F.conv2d((x - mean) / std, sd["init_conv.weight"], padding=1)
    for g, stride in enumerate((1, 2, 2)):
        for i in range((depth - 4) // 6):
            p, s = f"layer.{g}.block.{i}", stride if i == 0 else 1
            pre = F.silu(_bn(out, sd, f"{p}.batchnorm_0"))
            v = F.pad(pre, (1, 1, 1, 1) if s == 1 else (0, 1, 0, 1))
            branch = F.conv2d(v, sd[f"{p}.conv_0.weight"], stride=s)
            branch = F.conv2d(F.silu(_bn(branch, sd, f"{p}.batchnorm_1")), sd[f"{p}.conv_1.weight"], padding=1)
            key = f"{p}.shortcut.weight"
            out = (F.conv2d(pre, sd[key], stride=s) if key in sd else out) + branch
    out = F.silu(_bn(out, sd, "batchnorm"))
    c = out.size(1)
    out = F.avg_pool2d(out, 8).view(-1, c) if pool == "avg8" else out.mean(dim=(2, 3))
    return F.linear(out, sd["logits.weight"], sd["logits.bias"])


@pytest.mark.parametrize("depth,width,padding,side", [(10, 1, 0, 8), (10, 2, 2, 9), (16, 1, 2, 9)])
def test_dm_wideresnet_matches_deepmind_reference(depth, width, padding, side):
    model = _randomize(create_model("dm_wideresnet", activation="swish", depth=depth, width=width,
                                    padding=padding))
    assert model.build_kwargs["activation"] == "silu" and isinstance(model.relu, nn.SiLU)
    seen = _record(model, "final_site")
    x = torch.rand(2, 3, 32, 32)
    sd = model.state_dict()
    with torch.no_grad():
        got = model(x)
        want = _dm_reference(sd, x, depth, padding)
        wrong = _dm_reference(sd, x, depth, padding, pool="global")
    # 32 + 2p, stride-2 'SAME' twice: 32 -> 8, 36 -> 18 -> 9 (then one top-left 8x8 window is averaged)
    assert seen["final_site"].shape == (2, 64 * width, side, side)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    if side > 8:
        assert (got - wrong).abs().max() > 1e-4  # a global mean is not DeepMind's pooling here


def _bn_keys(name: str) -> list[str]:
    return [f"{name}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


DM_WRN_10_1_KEYS = [
    "init_conv.weight",
    *_bn_keys("layer.0.block.0.batchnorm_0"), "layer.0.block.0.conv_0.weight",
    *_bn_keys("layer.0.block.0.batchnorm_1"), "layer.0.block.0.conv_1.weight",
    *_bn_keys("layer.1.block.0.batchnorm_0"), "layer.1.block.0.conv_0.weight",
    *_bn_keys("layer.1.block.0.batchnorm_1"), "layer.1.block.0.conv_1.weight",
    "layer.1.block.0.shortcut.weight",
    *_bn_keys("layer.2.block.0.batchnorm_0"), "layer.2.block.0.conv_0.weight",
    *_bn_keys("layer.2.block.0.batchnorm_1"), "layer.2.block.0.conv_1.weight",
    "layer.2.block.0.shortcut.weight",
    *_bn_keys("batchnorm"),
    "logits.weight", "logits.bias",
]


def test_dm_wideresnet_state_dict_names_and_shapes():
    sd = create_model("dm_wideresnet", depth=10, width=1).state_dict()
    assert list(sd) == DM_WRN_10_1_KEYS
    assert sd["layer.0.block.0.conv_0.weight"].shape == (16, 16, 3, 3)
    assert sd["layer.1.block.0.shortcut.weight"].shape == (32, 16, 1, 1)
    assert sd["layer.2.block.0.conv_1.weight"].shape == (64, 64, 3, 3)
    assert sd["logits.weight"].shape == (10, 64)


def test_dm_wrn70_16_and_28_10_shapes_on_meta():
    """Built on the meta device: shapes and counts without allocating 1 GB."""
    with torch.device("meta"):
        big = create_model("dm_wrn70_16")
        mid = create_model("dm_wrn28_10")
    assert [len(g.block) for g in big.layer] == [11, 11, 11]
    assert big.layer[2].block[0].conv_0.weight.shape == (1024, 512, 3, 3)
    assert big.logits.in_features == 1024
    assert sum(p.numel() for p in big.parameters()) == 266_796_506
    assert [len(g.block) for g in mid.layer] == [4, 4, 4] and mid.logits.in_features == 640
    assert sum(p.numel() for p in mid.parameters()) == 36_479_194


def test_dm_wideresnet_default_normalisation():
    model = _randomize(create_model("dm_wideresnet", depth=10, width=1))
    assert model.build_kwargs["normalize"] == CIFAR10
    assert "input_mean" not in model.state_dict()  # as in DeepMind's code: not a checkpoint tensor
    raw = create_model("dm_wideresnet", depth=10, width=1, normalize="none").eval()
    assert raw.build_kwargs["normalize"] is None and raw.input_mean is None
    raw.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - raw(x)).abs().max() > 1e-3


def test_dm_wideresnet_takes_no_defense():
    with pytest.raises(RobustactError, match="has no placement for arch 'dm_wideresnet'") as err:
        build_model("dm_wideresnet", depth=10, width=1, defense="cas")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- WRN fc_bias

def test_wrn_without_fc_bias_loads_strictly_and_takes_a_defense():
    model = _randomize(create_model("wideresnet", depth=10, widen_factor=1, fc_bias=False))
    keys = list(model.state_dict())
    assert "fc.weight" in keys and "fc.bias" not in keys
    assert "fc.bias" in create_model("wideresnet", depth=10, widen_factor=1).state_dict()
    again = create_model("wideresnet", depth=10, widen_factor=1, fc_bias=False).eval()
    again.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="fc.bias"):
        again.load_state_dict(create_model("wideresnet", depth=10, widen_factor=1).state_dict(), strict=True)
    assert arch_options("wrn34_10")["fc_bias"] is bool and arch_options("wrn28_10")["fc_bias"] is bool
    defended = build_model("wideresnet", depth=10, widen_factor=1, fc_bias=False, defense="cas").eval()
    assert defended.fc.bias is None and defended(x).shape == (2, 10)


# ---------------------------------------------------------------------------------------------- bad options

@pytest.mark.parametrize("arch,kwargs,message", [
    ("preact_resnet18", {"shortcut": "raw"}, "shortcut must be one of preact, input, got 'raw'"),
    ("preact_resnet18", {"final_bn": "maybe"}, "final_bn: expected true or false"),
    ("dm_wideresnet", {"depth": 11}, r"depth must be 6n \+ 4"),
    ("dm_wideresnet", {"padding": -1}, "padding must be >= 0"),
    ("dm_wideresnet", {"width": 0}, "width must be >= 1"),
    ("dm_wideresnet", {"widen_factor": 10}, "does not take widen_factor; it takes: depth, width, padding"),
    ("dm_wrn70_16", {"depth": 28}, "does not take depth; it takes: padding"),
])
def test_bad_options_are_one_line(arch, kwargs, message):
    with pytest.raises(ConfigError, match=message) as err:
        create_model(arch, **kwargs)
    assert "\n" not in str(err.value)
