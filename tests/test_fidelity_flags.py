"""The official-code fidelity flags (METHODS.md §7): CW's batch-summed hinge (CAS evaluation), the training attack's
normal start, 1-based epoch counting of the LR milestones, unclamped random starts. Each is off by default and the
default path is unchanged."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustact import build_model
from robustact.attacks import FGSM, PGD, AuxTerm
from robustact.attacks.losses import margin_loss
from robustact.config import apply_overrides, load_preset, resolve
from robustact.defenses import aux_logits
from robustact.errors import ConfigError, RobustactError
from robustact.evaluation.suites import build_suite
from robustact.training.objectives import ObjectiveContext, pgd_at, trades_adversary, training_attack
from robustact.training.schedules import lr_at

EPS = 8 / 255


def identity_net() -> nn.Module:
    """logits = the two pixels of a (N, 2, 1, 1) image: the margin of class 0 is x0 - x1."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.eye(2))
    return net


def official_cw(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The CW loss of the official `pgd_attack_cifar10_cas.py`, written out: -relu(sum z_y - sum z_wrong)."""
    correct = logits.gather(1, y[:, None]).squeeze(1).sum()
    top2 = logits.argsort(dim=1)[:, -2:]
    wrong = logits.gather(1, torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])[:, None]).squeeze(1).sum()
    return -F.relu(correct - wrong)


# -- 1. CW's hinge on the batch-summed margin -------------------------------------------------------------------

def test_batch_hinge_freezes_a_batch_whose_summed_margin_is_not_positive():
    net = identity_net()
    x = torch.tensor([[0.52, 0.48], [0.10, 0.90], [0.20, 0.70]]).view(3, 2, 1, 1)  # margins 0.04, -0.8, -0.5
    y = torch.zeros(3, dtype=torch.long)
    batch = PGD(EPS, steps=5, alpha=EPS / 2, random_start=False, loss="margin", hinge="batch")
    example = PGD(EPS, steps=5, alpha=EPS / 2, random_start=False, loss="margin")
    _, loss_b, grad_b = batch.loss_and_grad(net, x, y)
    _, loss_e, grad_e = example.loss_and_grad(net, x, y)
    assert torch.all(grad_b == 0) and float(loss_b.sum()) == 0        # sum of margins -1.26 <= 0: nothing moves
    assert torch.all(grad_e[0] != 0) and torch.all(grad_e[1:] == 0)    # the still-correct example keeps moving
    assert torch.equal(batch(net, x, y), x)
    x_adv = example(net, x, y)
    assert net(x_adv)[0].argmax() == 1 and torch.equal(x_adv[1:], x[1:])  # the per-example hinge fools it


def test_batch_hinge_equals_the_official_loss_and_gradient_while_the_sum_is_positive():
    torch.manual_seed(3)
    logits = torch.randn(6, 5, requires_grad=True)
    y = torch.randint(0, 5, (6,))
    with torch.no_grad():
        logits[:, 0] += 3  # most examples correct on class 0 ...
    y[:4] = 0               # ... and labelled 0, so the summed margin is positive
    shares = margin_loss(logits, y, hinge="batch")
    ref = official_cw(logits, y)
    assert float(ref.detach()) < 0
    torch.testing.assert_close(shares.sum(), ref)
    (g_mine,) = torch.autograd.grad(shares.sum(), logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_mine, g_ref)
    # per example, the hinge is on each margin: differs from the batch form on the misclassified rows
    per_example = margin_loss(logits, y)
    assert torch.all(per_example <= 0) and not torch.allclose(per_example, shares)


def test_cas_paper_suite_cw_hinge_batch_is_the_official_cw_on_both_heads():
    model = build_model("resnet_small", num_classes=10, defense="cas").eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point and "running_var" not in name:
                t.copy_(torch.randn(t.shape, generator=g) * 0.3)
    cw = build_suite("paper", model, EPS, options={"cw_hinge": "batch"})["cw20"]
    assert cw.hinge == "batch" and cw.extra_loss.hinge == "batch"
    assert "hinge=batch" in repr(cw) and "batch hinge" in repr(cw)
    x = torch.rand(4, 3, 32, 32, generator=g)
    with torch.no_grad():
        logits, aux = model(x), aux_logits(model)
    # labels that keep the summed margin positive on the final head (its predictions but one), on the first aux head
    # (its predictions), and on no head (what every head ranks last): the hinge of each head follows its own sum
    cases = (torch.cat([logits.argmax(1)[:3], logits.argmin(1)[3:]]), aux[0].argmax(1), aux[0].argmin(1))
    for case, y in enumerate(cases):
        xr = x.clone().requires_grad_(True)
        out = model(xr)
        heads = [official_cw(h, y) for h in [out, *aux_logits(model)]]
        mine = cw.loss(model, out, y).sum()
        ref = heads[0] + 2.0 * torch.stack(heads[1:]).mean()
        torch.testing.assert_close(mine, ref)
        (g_mine,) = torch.autograd.grad(mine, xr, retain_graph=True)
        (g_ref,) = torch.autograd.grad(ref, xr)
        torch.testing.assert_close(g_mine, g_ref)
        active = [float(h.detach()) < 0 for h in heads]
        assert active[case] if case < 2 else not any(active) and torch.all(g_mine == 0)


def test_cw_hinge_default_is_unchanged_and_bad_values_are_errors():
    model = build_model("resnet_small", num_classes=10, defense="cas")
    cw = build_suite("paper", model, EPS)["cw20"]
    assert cw.hinge == "example" and cw.extra_loss.hinge == "example" and cw.clamp_start
    assert repr(cw) == ("PGD(eps=0.031, norm=Linf, loss=margin, kappa=0, extra=2*mean CW margin(kappa 0)(aux), "
                        "steps=20, alpha=0.003, random_start=uniform, restarts=1)")
    logits, y = torch.randn(5, 4), torch.randint(0, 4, (5,))
    torch.testing.assert_close(margin_loss(logits, y), -(logits.gather(1, y[:, None]).squeeze(1) - logits.masked_fill(
        F.one_hot(y, 4).bool(), float("-inf")).amax(1)).clamp(min=0))
    with pytest.raises(RobustactError, match="expected one of example, batch"):
        build_suite("paper", model, EPS, options={"cw_hinge": "sum"})
    with pytest.raises(RobustactError, match="margin"):
        PGD(EPS, loss="ce", hinge="batch")
    with pytest.raises(ValueError, match="margin"):
        AuxTerm(1.0, "ce", hinge="batch")
    ewas = build_model("resnet_small", num_classes=10, defense="ewas")
    with pytest.raises(RobustactError, match="no option 'cw_hinge'"):  # the EWAS script hinges per example
        build_suite("paper", ewas, EPS, options={"cw_hinge": "batch"})


# -- 2. the training attack's start ---------------------------------------------------------------------------

def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 4))


def context(*overrides: str) -> ObjectiveContext:
    return ObjectiveContext.from_config(resolve(apply_overrides(load_preset("demo"), list(overrides))).training)


def test_normal_start_of_the_training_attack():
    ctx = context("training.attack.start=normal")
    pgd = training_attack(small_net(), ctx)
    assert (pgd.start, pgd.start_sigma, pgd.clamp_start) == ("normal", 0.001, True)
    assert "normal(0.001)" in repr(pgd)
    x = torch.full((64, 3, 8, 8), 0.5)
    delta = pgd.first_point(x, torch.Generator().manual_seed(0)) - x
    assert abs(float(delta.std()) - 0.001) < 5e-5 and abs(float(delta.mean())) < 5e-5
    edge = torch.zeros(64, 3, 8, 8)                              # on the box edge, clamped by default ...
    assert float(pgd.first_point(edge, torch.Generator().manual_seed(0)).min()) == 0.0
    unclamped = training_attack(small_net(), context("training.attack.start=normal",
                                                     "training.attack.clamp_start=false"))
    start = unclamped.first_point(edge, torch.Generator().manual_seed(0))
    assert float(start.min()) < 0 and abs(float(start.std()) - 0.001) < 5e-5  # ... and not with clamp_start=false


def test_default_training_attack_is_bit_identical_to_the_uniform_start():
    ctx = context()
    assert (ctx.start, ctx.start_sigma, ctx.clamp_start, ctx.random_start) == ("uniform", 0.001, True, True)
    model, x, y = small_net(), torch.rand(6, 3, 8, 8), torch.randint(0, 4, (6,))
    torch.manual_seed(7)
    mine = training_attack(model, ctx)(model, x, y)
    torch.manual_seed(7)
    before = PGD(ctx.eps, steps=ctx.steps, alpha=ctx.alpha, random_start=True, model_mode="eval", seed=None,
                 validate=False)(model, x, y)
    assert torch.equal(mine, before)
    torch.manual_seed(7)
    start = training_attack(model, ctx).first_point(x, None)
    torch.manual_seed(7)
    assert torch.equal(start, (x + EPS * (torch.rand(x.shape) * 2 - 1)).clamp(x - EPS, x + EPS).clamp(0, 1))
    torch.manual_seed(7)
    loss_a, _ = pgd_at(model, x, y, ctx)
    torch.manual_seed(7)
    loss_b, _ = pgd_at(model, x, y, ObjectiveContext(eps=ctx.eps, alpha=ctx.alpha, steps=ctx.steps))
    assert torch.equal(loss_a, loss_b)


def test_trades_start_unchanged_by_default_and_unclamped_on_request():
    model, y = small_net(), torch.zeros(6, dtype=torch.long)
    x = torch.zeros(6, 3, 8, 8)
    ctx = ObjectiveContext(steps=1)
    torch.manual_seed(2)
    mine = trades_adversary(model, x, ctx)
    from robustact.training.objectives import KLFrom
    torch.manual_seed(2)
    ref = PGD(ctx.eps, steps=1, alpha=ctx.alpha, random_start=True, start="normal", start_sigma=0.001,
              loss=KLFrom(model(x)), seed=None, validate=False)(model, x, y)
    assert torch.equal(mine, ref)
    seen = []
    hook = model.register_forward_pre_hook(lambda m, inp: seen.append(float(inp[0].detach().min())))
    trades_adversary(model, x, ObjectiveContext(steps=1, clamp_start=False))
    hook.remove()
    assert seen[1] < 0  # the KL adversary's first forward (after the natural one) sees the unclamped start


def test_presets_keep_their_starts():
    for name in ("cas-mart-resnet18-cifar10", "ewas-mart-resnet18-cifar10", "mart-resnet18-cifar10"):
        c = resolve(load_preset(name))
        assert (c.training.attack.start, c.training.attack.clamp_start, c.training.schedule.epoch_base) == \
            ("uniform", True, 0)
    with pytest.raises(ConfigError, match=r"training\.attack\.start: must be one of uniform, normal"):
        context("training.attack.start=gaussian")


# -- 3. epochs counted from 1 ---------------------------------------------------------------------------------

def test_epoch_base_one_drops_the_lr_one_epoch_earlier():
    base0 = {"name": "multistep", "milestones": [75, 90]}
    base1 = {**base0, "epoch_base": 1}
    # epoch index (0-based, as the trainer counts) -> LR
    assert [lr_at(base0, 0.1, e, 100) for e in (73, 74, 75)] == pytest.approx([0.1, 0.1, 0.01])
    assert [lr_at(base1, 0.1, e, 100) for e in (73, 74, 75)] == pytest.approx([0.1, 0.01, 0.01])
    assert lr_at(base1, 0.1, 73.99, 100) == 0.1 and math.isclose(lr_at(base1, 0.1, 88, 100), 0.01)
    assert math.isclose(lr_at(base1, 0.1, 89, 100), 0.001) and math.isclose(lr_at(base0, 0.1, 89, 100), 0.01)
    # the CAS TRADES script: 100 epochs, drops at 75/90/100 counted from 1 -> its last epoch runs at 1e-4
    trades = {"name": "multistep", "milestones": [75, 90, 100], "epoch_base": 1}
    assert math.isclose(lr_at(trades, 0.1, 99, 100), 1e-4) and math.isclose(lr_at(trades, 0.1, 98, 100), 1e-3)
    assert math.isclose(lr_at({**trades, "epoch_base": 0}, 0.1, 99, 100), 1e-3)
    with pytest.raises(ConfigError, match="epoch_base"):
        lr_at({"name": "cosine", "epoch_base": 1}, 0.1, 0, 10)
    with pytest.raises(ConfigError, match="one of 0, 1"):
        lr_at({"name": "multistep", "epoch_base": 2}, 0.1, 0, 10)


# -- 4. unclamped random starts -------------------------------------------------------------------------------

def test_unclamped_start_keeps_the_ball_not_the_box():
    x = torch.cat([torch.zeros(8, 3, 4, 4), torch.ones(8, 3, 4, 4)])
    gen = torch.Generator().manual_seed(0)
    clamped = PGD(EPS).first_point(x, gen)
    assert float(clamped.min()) >= 0 and float(clamped.max()) <= 1
    gen = torch.Generator().manual_seed(0)
    free = PGD(EPS, clamp_start=False).first_point(x, gen)
    assert float(free.min()) < 0 and float(free.max()) > 1 and float((free - x).abs().max()) <= EPS
    assert torch.equal(free.clamp(0, 1), clamped)  # same draw; only the box clamp differs
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    y = torch.zeros(16, dtype=torch.long)
    for attack in (PGD(EPS, steps=2, clamp_start=False), FGSM(EPS, random_start=True, clamp_start=False)):
        assert "clamp_start=False" in repr(attack)
        x_adv = attack(net, x, y)
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1  # every step still projects into [0, 1]
    assert "clamp_start" not in repr(PGD(EPS)) and "clamp_start" not in repr(FGSM(EPS, random_start=True))


def test_cas_paper_suite_clamp_start_option():
    model = build_model("resnet_small", num_classes=10, defense="cas")
    suite = build_suite("paper", model, EPS, options={"clamp_start": "false", "cw_hinge": "batch"})
    assert [a.clamp_start for a in suite.values()] == [False, False, False]
    assert suite["pgd20"].hinge == "example" and suite["cw20"].hinge == "batch"
    assert all(a.clamp_start for a in build_suite("paper", model, EPS).values())
    with pytest.raises(RobustactError, match="expected true or false"):
        build_suite("paper", model, EPS, options={"clamp_start": "maybe"})
    plain = build_model("resnet_small", num_classes=10)  # a baseline under --protocol cas takes the options too
    assert build_suite("paper", plain, EPS, options={"cw_hinge": "batch"}, protocol="cas")["cw20"].hinge == "batch"
