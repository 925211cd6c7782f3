"""Training objectives: what distinguishes each, on small inputs, against independent computations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustact.training.objectives import ObjectiveContext, get_objective, mart_loss
from robustact.training.schedules import lr_at


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 4))


def batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_trades_with_beta_zero_is_standard_training():
    model, (x, y) = small_net(), batch()
    ctx = ObjectiveContext(eps=8 / 255, alpha=2 / 255, steps=3, trades_beta=0.0)
    loss_trades, _ = get_objective("trades")(model, x, y, ctx)
    loss_std, _ = get_objective("standard")(model, x, y, ctx)
    torch.testing.assert_close(loss_trades, loss_std)
    torch.testing.assert_close(loss_std, F.cross_entropy(model(x), y))


def test_trades_kl_term_matches_independent_formula():
    model, (x, y) = small_net(), batch()
    ctx = ObjectiveContext(eps=8 / 255, alpha=2 / 255, steps=2, trades_beta=6.0)
    torch.manual_seed(5)
    loss, logits_adv = get_objective("trades")(model, x, y, ctx)
    p_nat = F.softmax(model(x), 1)
    p_adv = F.softmax(logits_adv, 1)
    kl = (p_nat * (p_nat.log() - p_adv.log())).sum(1).mean()
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y) + 6.0 * kl, rtol=1e-5, atol=1e-6)
    assert kl > 0


def test_pgd_at_with_eps_zero_is_standard_training():
    model, (x, y) = small_net(), batch()
    ctx = ObjectiveContext(eps=0.0, alpha=0.0, steps=3)
    loss_adv, _ = get_objective("pgd_at")(model, x, y, ctx)
    loss_std, _ = get_objective("standard")(model, x, y, ctx)
    torch.testing.assert_close(loss_adv, loss_std)


def test_pgd_at_loss_exceeds_clean_loss():
    model, (x, y) = small_net(), batch()
    ctx = ObjectiveContext(eps=8 / 255, alpha=2 / 255, steps=5)
    assert get_objective("pgd_at")(model, x, y, ctx)[0] > get_objective("standard")(model, x, y, ctx)[0]


def mart_reference(logits_adv, logits_nat, y, beta):
    """MART written out per example, from the paper's equations (independent of the implementation)."""
    total = 0.0
    n = len(y)
    for i in range(n):
        pa = torch.softmax(logits_adv[i].double(), 0)
        pn = torch.softmax(logits_nat[i].double(), 0)
        yi = int(y[i])
        ce = -math.log(pa[yi])
        others = [j for j in range(len(pa)) if j != yi]
        j_max = max(others, key=lambda j: pa[j])
        bce = ce - math.log(1.0001 - pa[j_max] + 1e-12)
        kl = float((pn * (pn.log() - (pa + 1e-12).log())).sum())
        total += bce + beta * kl * (1.0000001 - float(pn[yi]))
    return total / n


def test_mart_loss_matches_per_example_reference():
    g = torch.Generator().manual_seed(3)
    logits_adv, logits_nat = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    got = mart_loss(logits_adv, logits_nat, y, beta=6.0)
    assert abs(got.item() - mart_reference(logits_adv, logits_nat, y, 6.0)) < 1e-4


def test_mart_weighting_vanishes_for_confident_correct_natural_predictions():
    """The KL term is weighted by 1 - p_y(x): a natural prediction with p_y = 1 contributes no KL."""
    logits_adv = torch.tensor([[0.0, 2.0, 0.0]])
    y = torch.tensor([0])
    confident = torch.tensor([[60.0, 0.0, 0.0]])
    unsure = torch.tensor([[0.0, 0.0, 0.0]])
    bce_only = mart_loss(logits_adv, confident, y, beta=0.0)
    assert abs(mart_loss(logits_adv, confident, y, beta=6.0).item() - bce_only.item()) < 1e-5
    assert mart_loss(logits_adv, unsure, y, beta=6.0) > bce_only + 0.1


def test_mart_boosted_ce_uses_the_most_likely_wrong_class():
    y = torch.tensor([0])
    a = mart_loss(torch.tensor([[1.0, 3.0, 0.0]]), torch.tensor([[1.0, 3.0, 0.0]]), y, beta=0.0)
    pa = torch.softmax(torch.tensor([1.0, 3.0, 0.0]), 0)
    expected = -torch.log(pa[0]) - torch.log(1.0001 - pa[1])
    torch.testing.assert_close(a, expected, rtol=1e-5, atol=1e-6)


def test_fgsm_rs_perturbation_stays_in_ball():
    model, (x, y) = small_net(), batch()
    ctx = ObjectiveContext(eps=8 / 255, fgsm_alpha=10 / 255, attack_model_mode="train")
    seen = {}
    orig = model.forward

    def spy(inp):
        seen.setdefault("inputs", []).append(inp.detach())
        return orig(inp)

    model.forward = spy
    get_objective("fgsm_rs")(model, x, y, ctx)
    trained_on = seen["inputs"][-1]
    assert (trained_on - x).abs().max() <= 8 / 255 + 1e-6
    assert (trained_on - x).abs().max() > 4 / 255  # it did move


def test_schedules():
    s = {"name": "multistep", "milestones": [75, 90], "gamma": 0.1}
    assert lr_at(s, 0.1, 74.9, 100) == 0.1
    assert math.isclose(lr_at(s, 0.1, 75, 100), 0.01)
    assert math.isclose(lr_at(s, 0.1, 95, 100), 0.001)
    c = {"name": "cyclic", "warmup_fraction": 0.5}
    assert lr_at(c, 0.2, 0, 10) == 0 and math.isclose(lr_at(c, 0.2, 5, 10), 0.2) and lr_at(c, 0.2, 10, 10) == 0
    cos = {"name": "cosine"}
    assert math.isclose(lr_at(cos, 0.1, 0, 10), 0.1) and math.isclose(lr_at(cos, 0.1, 5, 10), 0.05)
