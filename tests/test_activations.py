"""Activations: registry names, PSSiLU, and Sparta (our reconstruction) — Swish/ReLU limits, spatial gates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_cifar
from torch import nn

from robustact import build_model
from robustact.errors import ConfigError
from robustact.models import list_activations, make_activation
from robustact.models.activations import PSSiLU, activation_spec, canonical_activation, learnable_activations
from robustact.models.sparta import Sparta

ALL = ["relu", "silu", "softplus", "gelu", "elu", "pssilu", "sparta", "sparta_shared"]


def test_names_registered_with_models_import():
    names = list_activations()
    for name in ALL + ["sparta_b1"]:  # the short names presets use are aliases of sparta with options
        assert name in names
    assert activation_spec("sparta_b1") == ("sparta", {"beta0": 1.0})
    assert canonical_activation({"name": "Sparta", "kernel_size": 5}) == {"name": "sparta", "kernel_size": 5}
    assert canonical_activation("sparta_shared") == {"name": "sparta", "shared": True}
    assert canonical_activation({"name": "relu"}) == "relu"
    with pytest.raises(ConfigError, match="does not take size; it takes: kernel_size, beta0, shared"):
        activation_spec({"name": "sparta", "size": 5})
    with pytest.raises(ConfigError, match="kernel_size.*expected an integer"):
        activation_spec({"name": "sparta", "kernel_size": 2.5})
    with pytest.raises(ConfigError, match="needs a name"):
        activation_spec({"kernel_size": 5})
    with pytest.raises(ConfigError, match="odd"):
        make_activation({"name": "sparta", "kernel_size": 4}, 3)


@pytest.mark.parametrize("spec,kind", [("sparta", (3, 8.0, False)), ("sparta_shared", (3, 8.0, True)),
                                       ({"name": "sparta", "kernel_size": 5, "beta0": 2}, (5, 2.0, False)),
                                       ({"name": "sparta", "kernel_size": 1, "beta0": 16, "shared": True},
                                        (1, 16.0, True)),
                                       ({"name": "sparta", "kernel_size": 7}, (7, 8.0, False)),
                                       ({"name": "sparta_b1", "shared": True}, (3, 1.0, True))])
def test_variant_specs_build_their_module(spec, kind):
    m = make_activation(spec, 6)
    assert isinstance(m, Sparta) and (m.kernel_size, m.beta0, m.shared) == kind and m.channels == 6


@pytest.mark.parametrize("arch", ["resnet_small", "preact_resnet18", "wideresnet", "vgg16"])
@pytest.mark.parametrize("activation", ["sparta", "pssilu", "silu"])
def test_every_relu_replaced_in_every_arch(arch, activation):
    kwargs = {"depth": 10, "widen_factor": 1} if arch == "wideresnet" else {}
    model = build_model(arch, activation=activation, **kwargs)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    if activation != "silu":
        sites = learnable_activations(model)
        assert len(sites) > 0
        params = [id(p) for _, m in sites for p in m.parameters()]
        assert len(params) == len(set(params))  # every site owns its parameters
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_sparta_1x1_centre_only_is_swish_exactly():
    x = torch.randn(4, 5, 7, 7) * 3
    for beta in (0.5, 1.0, 8.0):
        m = Sparta(5, kernel_size=1, beta0=beta)
        assert torch.equal(m(x), x * torch.sigmoid(beta * x))
    m = Sparta(5, kernel_size=1, beta0=1.0)
    torch.testing.assert_close(m(x), F.silu(x))
    # and the k x k kernel with centre tap only (the initialisation) is the same function
    torch.testing.assert_close(Sparta(5, kernel_size=3, beta0=8.0)(x), x * torch.sigmoid(8.0 * x))
    torch.testing.assert_close(Sparta(5, kernel_size=3, beta0=8.0, shared=True)(x), x * torch.sigmoid(8.0 * x))


def test_sparta_approaches_relu_as_beta_grows():
    x = torch.randn(2, 3, 9, 9) * 2
    errs = [(Sparta(3, 3, beta0=b)(x) - F.relu(x)).abs().max().item() for b in (1.0, 4.0, 16.0, 64.0, 256.0)]
    assert all(a > b for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 2e-3  # max |x·σ(βx) − relu(x)| ≤ 0.28/β
    assert errs[0] == pytest.approx(0.2785, abs=5e-3)


def _perturb_centre_pixel(act: nn.Module, gate) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(1, 2, 8, 8)
    x2 = x.clone()
    x2[0, 0, 4, 4] += 1.0
    return gate(act, x), gate(act, x2)


def test_sparta_gate_depends_on_neighbours_relu_does_not():
    sparta = Sparta(2, kernel_size=3, beta0=4.0)
    with torch.no_grad():
        sparta.weight[:, :, 0, 1] = 1.0  # a learned off-centre tap
    g0, g1 = _perturb_centre_pixel(sparta, lambda m, x: m.gate(x))
    changed = (g0 != g1)[0, 0]
    assert changed[4, 4] and changed[5, 4]  # the pixel itself and a neighbour
    assert changed.sum() == 2 and not (g0 != g1)[0, 1].any()  # depthwise: other channels untouched
    # ReLU's gate is the indicator 1[x > 0]: only the perturbed position can change
    r0, r1 = _perturb_centre_pixel(nn.ReLU(), lambda m, x: (x > 0).float())
    relu_changed = (r0 != r1)[0, 0]
    relu_changed[4, 4] = False
    assert not relu_changed.any()
    # a 1x1 Sparta (Swish) is pointwise too
    s0, s1 = _perturb_centre_pixel(Sparta(2, kernel_size=1), lambda m, x: m.gate(x))
    assert (s0 != s1).sum() <= 1


def test_sparta_shared_kernel_is_width_agnostic():
    a, b = Sparta(4, shared=True), Sparta(16, shared=True)
    assert a.weight.shape == b.weight.shape == (1, 1, 3, 3)
    assert a.scale.shape == (4,) and b.bias.shape == (16,)
    with torch.no_grad():
        a.weight.normal_()
        a.scale.uniform_(0.5, 2)
    x = torch.randn(2, 4, 5, 5)
    expected = x * torch.sigmoid(F.conv2d(x, a.scale.view(-1, 1, 1, 1) * a.weight.expand(4, 1, 3, 3), a.bias,
                                          padding=1, groups=4))
    torch.testing.assert_close(a(x), expected)


def test_sparta_bad_options_and_input():
    with pytest.raises(ConfigError, match="odd"):
        Sparta(4, kernel_size=2)
    with pytest.raises(ConfigError, match="expected"):
        Sparta(4)(torch.randn(1, 3, 4, 4))


def test_sparta_gradients_reach_all_parameters():
    m = Sparta(3, shared=True)
    m(torch.randn(2, 3, 6, 6)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_pssilu():
    x = torch.randn(100)
    m = PSSiLU(alpha=1.0, beta=0.0)
    torch.testing.assert_close(m(x), F.silu(x))
    m = PSSiLU(alpha=-2.0, beta=-0.3)  # |α|, |β|
    torch.testing.assert_close(m(x), x * (torch.sigmoid(2 * x) - 0.3) / 0.7)
    m = PSSiLU()
    m(x).pow(2).sum().backward()
    assert m.alpha.grad is not None and m.beta.grad.abs() > 0  # β starts off 0 so |β| has a gradient
    assert torch.isfinite(PSSiLU(beta=5.0)(x)).all()  # |β| clamped below 1


def test_sparta_model_checkpoint_roundtrip(tmp_path):
    from robustact.checkpoints import load_model, save_weights

    model = build_model("resnet_small", activation={"name": "sparta", "shared": True, "kernel_size": 5})
    with torch.no_grad():
        for _, m in learnable_activations(model):
            m.weight.normal_()
    save_weights(model, tmp_path / "w.safetensors")
    loaded, _, _ = load_model(tmp_path / "w.safetensors")
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(loaded(x), model(x))


@requires_cifar
def test_gates_analysis_writes_figure_and_csv(tmp_path):
    import csv

    from robustact.analysis import AnalysisOptions, run_analysis
    from robustact.checkpoints import save_weights

    model = build_model("resnet_small", activation="sparta", width=4)
    with torch.no_grad():
        model.layer1[0].act1.weight[:, :, 0, 0] = 1.0
    save_weights(model, tmp_path / "sparta.safetensors")
    written = run_analysis("gates", [tmp_path / "sparta.safetensors"],
                           AnalysisOptions(out=tmp_path / "out", n=8, device="cpu"))
    assert {p.suffix for p in written} == {".csv", ".png"} and all(p.stat().st_size > 0 for p in written)
    rows = list(csv.DictReader(open(next(p for p in written if p.suffix == ".csv"))))
    assert len(rows) == len(learnable_activations(model))
    row = next(r for r in rows if r["site"] == "layer1.0.act1")
    assert float(row["kernel_offcentre_mass"]) > 0 and 0 < float(row["mean_gate_nat"]) < 1
    with pytest.raises(Exception, match="no Sparta activations"):
        save_weights(build_model("resnet_small", width=4), tmp_path / "relu.safetensors")
        run_analysis("gates", [tmp_path / "relu.safetensors"], AnalysisOptions(out=tmp_path / "out", n=8))


def test_activation_weight_decay_spares_only_the_activation_parameters():
    """With zero gradients an SGD step is pure weight decay: the Sparta/PSSiLU group (decay 0) must not move
    while every other parameter shrinks by lr·wd."""
    from robustact.training.trainer import parameter_groups

    torch.manual_seed(0)
    model = build_model("resnet_small", activation="sparta")
    groups = parameter_groups(model, 0.0)
    act = {id(p) for _, m in learnable_activations(model) for p in m.parameters()}
    assert {id(p) for p in groups[1]["params"]} == act and len(groups[0]["params"]) + len(act) == len(
        list(model.parameters()))
    before = {id(p): p.detach().clone() for p in model.parameters()}
    opt = torch.optim.SGD(groups, lr=0.1, weight_decay=5e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p in model.parameters():
        expected = before[id(p)] if id(p) in act else before[id(p)] * (1 - 0.1 * 5e-4)
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7)
    assert len(parameter_groups(model)) == 1
    with pytest.raises(ConfigError, match="no learnable activation"):
        parameter_groups(build_model("resnet_small"), 0.0)
