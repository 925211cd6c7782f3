"""FGSM and PGD: analytic optimum on linear models, threat-model invariants, hygiene, a trained network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustact.attacks import FGSM, PGD, margin_loss
from robustact.attacks.registry import make_attack
from robustact.errors import RobustactError

EPS = 8 / 255


def linear_model(d: int = 48, k: int = 2, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g))
        lin.bias.zero_()
    return nn.Sequential(nn.Flatten(), lin)


def linf_optimum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Closed form for a binary linear model: move each pixel by eps against w_y - w_other, clipped to [0, 1]."""
    w = model[1].weight
    d = (w[y] - w[1 - y]).view_as(x)
    return (x - eps * d.sign()).clamp(0, 1)


def test_pgd_linf_reaches_the_analytic_optimum_of_a_linear_model():
    model = linear_model()
    x = torch.rand(16, 3, 4, 4)
    y = torch.randint(0, 2, (16,))
    x_adv = PGD(EPS, steps=20, alpha=EPS / 4, random_start=True)(model, x, y)
    torch.testing.assert_close(x_adv, linf_optimum(model, x, y, EPS), atol=1e-6, rtol=0)


def test_fgsm_is_exactly_optimal_on_a_linear_model_and_margin_loss_agrees():
    model = linear_model(seed=1)
    x = torch.rand(8, 3, 4, 4)
    y = torch.randint(0, 2, (8,))
    expected = linf_optimum(model, x, y, EPS)
    torch.testing.assert_close(FGSM(EPS)(model, x, y), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(PGD(EPS, steps=10, loss="margin", kappa=1e4)(model, x, y), expected, atol=1e-6, rtol=0)


def test_pgd_l2_reaches_the_analytic_optimum_away_from_the_box():
    model = linear_model(seed=2)
    x = 0.25 + 0.5 * torch.rand(4, 3, 4, 4)  # far enough from 0 and 1 that eps=0.5 never clips
    y = torch.randint(0, 2, (4,))
    eps = 0.5
    w = model[1].weight
    d = (w[y] - w[1 - y]).view_as(x)
    optimum = x - eps * d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    x_adv = PGD(eps, norm="L2", steps=50, alpha=0.1)(model, x, y)
    margin = lambda z: -margin_loss(model(z), y, kappa=1e4) + 1e4  # noqa: E731
    torch.testing.assert_close(margin(x_adv), margin(optimum), atol=1e-3, rtol=0)
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= eps + 1e-5


@pytest.mark.parametrize("attack", [FGSM(EPS, random_start=True), PGD(EPS, steps=5), PGD(EPS, steps=3, restarts=2),
                                    PGD(EPS, steps=3, loss="margin"), PGD(0.5, norm="L2", steps=3)])
def test_result_stays_in_ball_and_box(attack):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.rand(6, 3, 8, 8)
    x[0] = 0.0
    x[1] = 1.0  # points on the box boundary
    y = torch.randint(0, 5, (6,))
    x_adv = attack(model, x, y)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    if attack.norm == "Linf":
        assert delta.abs().max() <= attack.eps + 1e-6
    else:
        assert delta.norm(dim=1).max() <= attack.eps + 1e-5


def test_attack_restores_mode_and_requires_grad_and_is_seeded():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    model.train()
    model[0].weight.requires_grad_(False)
    running = model[1].running_mean.clone()
    x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 3, (4,))
    a = PGD(EPS, steps=3, seed=7)
    x1 = a(model, x, y)
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True, True, True]
    torch.testing.assert_close(model[1].running_mean, running)  # eval mode: BN statistics untouched
    assert torch.equal(x1, a(model, x, y))  # same seed, same result
    assert not torch.equal(x1, PGD(EPS, steps=3, seed=8)(model, x, y))


def test_extra_loss_hook_receives_logits_and_changes_the_attack():
    model = linear_model(k=3, seed=3)
    x, y = torch.rand(5, 3, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    seen = {}

    def toward_class_2(m, logits, labels):
        seen["shape"] = logits.shape
        return 100.0 * logits[:, 2]

    plain = PGD(EPS, steps=5)(model, x, y)
    hooked = PGD(EPS, steps=5, extra_loss=toward_class_2)(model, x, y)
    assert seen["shape"] == (5, 3)
    assert not torch.equal(plain, hooked)
    assert (model(hooked)[:, 2] >= model(plain)[:, 2] - 1e-6).all()


@pytest.mark.parametrize("eps", [8, 255, -0.1, float("nan"), "8"])
def test_eps_out_of_range_is_an_error(eps):
    with pytest.raises(RobustactError):
        PGD(eps)


def test_inputs_outside_unit_box_are_an_error():
    model = linear_model()
    with pytest.raises(RobustactError, match=r"\[0, 1\]"):
        PGD(EPS)(model, torch.rand(2, 3, 4, 4) * 255, torch.tensor([0, 1]))


def test_registry_names():
    assert make_attack("pgd20", EPS).steps == 20
    cw = make_attack("cw", EPS)
    assert cw.steps == 30 and cw.loss_name == "margin"
    assert make_attack("pgd10x3", EPS).restarts == 3
    with pytest.raises(RobustactError, match="unknown attack"):
        make_attack("pgd-20-foo", EPS)


def test_autoattack_resnet18_pgd_drives_accuracy_to_zero_and_orders_attacks(autoattack_resnet18, cifar_test):
    """A network trained elsewhere, without adversarial training: PGD-20 at 8/255 breaks it; on a trained
    network PGD <= FGSM <= clean."""
    x, y = cifar_test[0][:100], cifar_test[1][:100]
    model = autoattack_resnet18
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    x_fgsm = FGSM(EPS)(model, x, y)
    x_pgd = PGD(EPS, steps=20, alpha=2 / 255)(model, x, y)
    with torch.no_grad():
        fgsm = (model(x_fgsm).argmax(1) == y).float().mean().item()
        pgd = (model(x_pgd).argmax(1) == y).float().mean().item()
    assert clean >= 0.9
    assert pgd <= 0.01
    assert pgd <= fgsm <= clean
