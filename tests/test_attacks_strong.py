"""APGD, APGD-T, FAB, Square and AutoAttack: closed-form optima on linear models, threat-model and box
constraints, targeted success, determinism, model-state hygiene and the extra_loss hook."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustact.attacks import APGD, APGDT, FAB, PGD, AutoAttack, EvalResult, Square, dlr_targeted_loss
from robustact.attacks.fab import hyperplane_projection
from robustact.attacks.square import p_schedule
from robustact.defenses import DefenseSite, aux_logits
from robustact.errors import RobustactError

EPS = 8 / 255
SHAPE = (3, 8, 8)
D = 3 * 8 * 8


pytestmark = pytest.mark.usefixtures("one_thread")


def linear_model(k: int, seed: int = 0, bias_scale: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    lin = nn.Linear(D, k)
    with torch.no_grad():
        lin.weight.normal_(0, 1.0 / D**0.5)
        lin.bias.normal_(0, bias_scale) if bias_scale else lin.bias.zero_()
    return nn.Sequential(nn.Flatten(), lin).eval()


def conv_model(k: int = 10, seed: int = 0, bn: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 8, 3, padding=1)]
    layers += [nn.BatchNorm2d(8)] if bn else []
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, k)]
    return nn.Sequential(*layers).eval()


def images(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *SHAPE, generator=g)
    x[:, 0, 0, :4] = 0.0  # pixels on the box edges: the box must clip the perturbation there
    x[:, 1, 0, :4] = 1.0
    return x


def optimal_margin(w_diff: torch.Tensor, b_diff: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """min over the Linf ball ∩ [0,1] of `w_diff·x' + b_diff`: every pixel moves by ε against sign(w_diff)."""
    xf = x.flatten(1)
    x_star = (xf - eps * w_diff.sign()).clamp(0.0, 1.0)
    return (x_star * w_diff).sum(1) + b_diff


def margins(model, x, y):
    with torch.no_grad():
        z = model(x)
    other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
    return z.gather(1, y[:, None]).squeeze(1) - other


# -- closed-form optimum on a binary linear model ----------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda eps: APGD(eps, steps=20),
    lambda eps: APGD(eps, steps=20, restarts=2),
    lambda eps: PGD(eps, steps=20),
    lambda eps: PGD(eps, steps=20, loss="margin", kappa=1e3),
], ids=["apgd-ce", "apgd-ce-x2", "pgd-ce", "pgd-margin"])
def test_linear_binary_reaches_closed_form_optimum(make):
    model = linear_model(2, bias_scale=0.3)
    x = images(64)
    with torch.no_grad():
        y = model(x).argmax(1)
    w, b = model[1].weight.detach(), model[1].bias.detach()
    w_diff = w[y] - w[1 - y]
    b_diff = b[y] - b[1 - y]
    eps = 4 / 255
    best = optimal_margin(w_diff, b_diff, x, eps)
    x_adv = make(eps)(model, x, y)
    got = margins(model, x_adv, y)
    reachable = best < 0
    assert reachable.any() and (~reachable).any()  # the test covers both regimes
    # where the optimum is still correct the attack must sit exactly on it; elsewhere it must fool
    assert torch.allclose(got[~reachable], best[~reachable], atol=1e-5)
    assert (got[reachable] < 0).all()
    assert ((x_adv - x).abs().amax() <= eps + 1e-7) and x_adv.min() >= 0 and x_adv.max() <= 1


def test_apgd_dlr_reaches_optimum_when_dlr_is_linear():
    """3 classes, z_0 and z_2 constant (z_2 far below): DLR = -(b_0 - z_1) / (b_0 - b_2) is linear in x, so
    its maximum over the ball ∩ box is the same corner as the margin's."""
    model = linear_model(3)
    with torch.no_grad():
        model[1].weight[0].zero_()
        model[1].weight[2].zero_()
        model[1].bias.copy_(torch.tensor([0.0, 0.0, -50.0]))
        x = images(48)
        model[1].bias[0] = model(x)[:, 1].max() + 0.05  # class 0 everywhere, with small margins
    y = torch.zeros(48, dtype=torch.long)
    w, b = model[1].weight.detach(), model[1].bias.detach()
    eps = 8 / 255
    best = optimal_margin((w[0] - w[1]).expand(48, -1), b[0] - b[1], x, eps)
    got = margins(model, APGD(eps, loss="dlr", steps=30)(model, x, y), y)
    robust = best > 0
    assert robust.sum() >= 5 and (~robust).sum() >= 5
    assert torch.allclose(got[robust], best[robust], atol=1e-5)
    assert (got[~robust] < 0).all()


# -- threat model and box ------------------------------------------------------------------------------
ATTACKS = {
    "apgd-ce": lambda eps, norm: APGD(eps, norm, steps=10),
    "apgd-dlr": lambda eps, norm: APGD(eps, norm, loss="dlr", steps=10, restarts=2),
    "apgd-t": lambda eps, norm: APGDT(eps, norm, steps=10, n_target_classes=3),
    "fab-t": lambda eps, norm: FAB(eps, norm, steps=10, n_target_classes=3),
    "fab": lambda eps, norm: FAB(eps, norm, steps=10, targeted=False, restarts=2),
    "square": lambda eps, norm: Square(eps, norm, n_queries=150),
    "aa": lambda eps, norm: AutoAttack(eps, norm, version="custom", attacks={
        "apgd-ce": APGD(eps, norm, steps=5), "square": Square(eps, norm, n_queries=50)}),
}


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("norm,eps", [("Linf", EPS), ("L2", 0.5)])
def test_stays_in_ball_and_box(name, norm, eps):
    model = conv_model()
    x = images(24)
    y = torch.randint(0, 10, (24,), generator=torch.Generator().manual_seed(3))
    x_adv = ATTACKS[name](eps, norm)(model, x, y)
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    assert x_adv.shape == x.shape and torch.isfinite(x_adv).all()
    assert (size <= eps * (1 + 1e-5) + 1e-7).all(), size.max()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_square_finds_adversarials_and_respects_linf_ball():
    model = conv_model(seed=2)
    x = images(32)
    with torch.no_grad():
        y = model(x).argmax(1)
    x_adv = Square(16 / 255, n_queries=300)(model, x, y)
    assert (x_adv - x).abs().amax() <= 16 / 255 + 1e-7
    assert 0 <= x_adv.min() and x_adv.max() <= 1
    assert (margins(model, x_adv, y) < 0).float().mean() > 0.3  # it is an attack, not just noise
    # random search on the margin: a robust point's margin never goes up
    still = margins(model, x_adv, y) > 0
    assert (margins(model, x_adv, y)[still] <= margins(model, x, y)[still] + 1e-5).all()


def test_square_p_schedule_matches_official_table():
    assert [p_schedule(i, 0.8, 5000) for i in (0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 1001)] == [
        0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05, 0.025]
    assert p_schedule(9000, 0.8, 10000) == 0.8 / 512
    assert p_schedule(500, 0.8, 1000, rescale=True) == 0.8 / 128  # 500 of 1000 -> 5000 of 10k


# -- targeted attacks reach their target -------------------------------------------------------------
def _one_reachable_class():
    """5 classes; classes 2-4 are constant and far below, so only class 1 can be reached."""
    model = linear_model(5, seed=4)
    with torch.no_grad():
        model[1].weight[2:].zero_()
        model[1].bias.copy_(torch.tensor([0.0, 0.0, -40.0, -41.0, -42.0]))
    x = images(64, seed=5)
    w, b = model[1].weight, model[1].bias
    with torch.no_grad():
        z = model(x)
        model[1].bias[0] = b[0] + (z[:, 1] - z[:, 0]).median() + 0.02
    y = torch.zeros(64, dtype=torch.long)
    return model, x, y, (w[0] - w[1]).expand(64, -1).detach(), (b[0] - b[1]).detach()


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("make", [
    lambda eps, norm: APGDT(eps, norm, steps=50, n_target_classes=1),
    lambda eps, norm: FAB(eps, norm, steps=50, n_target_classes=1),
], ids=["apgd-t", "fab-t"])
def test_targeted_reaches_the_target_when_reachable(make, norm):
    model, x, y, w_diff, b_diff = _one_reachable_class()
    eps = 3 / 255 if norm == "Linf" else 0.15
    if norm == "Linf":
        best = optimal_margin(w_diff, b_diff, x, eps)
        clearly = optimal_margin(w_diff, b_diff, x, eps * 0.9) < 0
    else:  # the L2 optimum within the box, from the projection onto the hyperplane margin = 0
        xf = x.flatten(1)
        dist = hyperplane_projection(xf, w_diff, -b_diff, "L2").norm(dim=1)
        wrong = (xf * w_diff).sum(1) + b_diff < 0  # already misclassified
        best = torch.where(wrong | (dist <= eps), -torch.ones(64), torch.ones(64))
        clearly = wrong | (dist <= 0.9 * eps)
    x_adv = make(eps, norm)(model, x, y)
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    assert clearly.sum() >= 5 and (best > 0).sum() >= 5
    assert (pred[clearly] == 1).all()  # reached the target class
    assert (pred[best > 0] == 0).all()  # unreachable ones cannot be fooled
    if isinstance(make(eps, norm), FAB):  # as the official FAB: the clean input where it failed
        assert torch.equal(x_adv[pred == 0], x[pred == 0])


def test_dlr_targeted_formula():
    z = torch.tensor([[5.0, 3.0, 1.0, 0.5, -1.0], [0.0, 4.0, 2.0, 1.0, 3.0]])
    y, t = torch.tensor([0, 1]), torch.tensor([1, 4])
    expected = torch.tensor([-(5 - 3) / (5 - (1 + 0.5) / 2), -(4 - 3) / (4 - (2 + 1) / 2)])
    assert torch.allclose(dlr_targeted_loss(z, y, t), expected)


# -- FAB's projection ----------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_hyperplane_projection_is_the_minimal_feasible_step(norm):
    g = torch.Generator().manual_seed(0)
    t = torch.rand(40, 30, generator=g)
    w = torch.randn(40, 30, generator=g)
    w[:, :3] = 0
    b = (w * torch.rand(40, 30, generator=g)).sum(1)
    d = hyperplane_projection(t, w, b, norm)
    assert torch.allclose((w * (t + d)).sum(1), b, atol=1e-4)
    assert (t + d).min() >= -1e-6 and (t + d).max() <= 1 + 1e-6
    assert (d[:, :3] == 0).all()
    # independent check: bisection on the radius (Linf) / the KKT multiplier (L2)
    r = (w * t).sum(1) - b
    s = torch.where(r >= 0, -1.0, 1.0)[:, None] * w.sign()  # direction that moves w·x toward b
    lo, hi = torch.zeros(40), torch.full((40,), 1e3)
    for _ in range(200):
        mid = (lo + hi) / 2
        step = s * mid[:, None] if norm == "Linf" else s * mid[:, None] * w.abs()
        x_new = (t + step).clamp(0, 1)
        passed = ((w * x_new).sum(1) - b) * r.sign() <= 0
        hi, lo = torch.where(passed, mid, hi), torch.where(passed, lo, mid)
    step = s * hi[:, None] if norm == "Linf" else s * hi[:, None] * w.abs()
    ref = (t + step).clamp(0, 1) - t
    size = (lambda v: v.abs().amax(1)) if norm == "Linf" else (lambda v: v.norm(dim=1))
    assert torch.allclose(size(d), size(ref), atol=1e-4)


def test_hyperplane_projection_infeasible_goes_to_the_corner():
    t = torch.full((1, 4), 0.5)
    w = torch.ones(1, 4)
    d = hyperplane_projection(t, w, torch.tensor([100.0]), "Linf")
    assert torch.equal(d, torch.full((1, 4), 0.5))


# -- determinism, state, hooks -------------------------------------------------------------------------
DET = {
    "apgd": lambda s: APGD(EPS, steps=10, restarts=2, seed=s),
    "apgd-l2": lambda s: APGD(0.3, "L2", steps=10, restarts=2, seed=s),
    "apgd-t": lambda s: APGDT(EPS, steps=10, n_target_classes=2, seed=s),
    "fab": lambda s: FAB(EPS, steps=10, targeted=False, restarts=2, seed=s),
    "square": lambda s: Square(EPS, n_queries=100, seed=s),
    "square-l2": lambda s: Square(0.3, "L2", n_queries=100, seed=s),
}


@pytest.mark.parametrize("name", list(DET))
def test_same_seed_same_result(name):
    model = conv_model()
    x = images(16)
    with torch.no_grad():
        y = model(x).argmax(1)
    a = DET[name](0)(model, x, y)
    b = DET[name](0)(model, x, y)
    assert torch.equal(a, b)
    if name.startswith("square"):
        assert not torch.equal(a, DET[name](1)(model, x, y))


def test_autoattack_deterministic_and_consistent():
    model = conv_model()
    x = images(20)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10  # some clean errors
    aa = AutoAttack(EPS, version="custom", attacks={
        "apgd-ce": APGD(EPS, steps=10), "apgd-t": APGDT(EPS, steps=10, n_target_classes=2),
        "fab-t": FAB(EPS, steps=10, n_target_classes=2), "square": Square(EPS, n_queries=50)}, batch_size=7)
    res = aa.run(model, x, y)
    assert isinstance(res, EvalResult)  # the evaluation's one result type
    assert res.cascaded == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert list(res.robust) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert not res.clean[:3].any()
    with torch.no_grad():
        correct = model(res.x_adv).argmax(1) == y
    assert torch.equal(correct, res.worst)  # the returned points realise the worst case
    assert res.accuracy()["worst_case"] == correct.float().mean().item()
    prev = res.clean
    for r in res.robust.values():  # cascade: robustness only ever shrinks
        assert not (r & ~prev).any()
        prev = r
    assert torch.equal(aa(model, x, y), res.x_adv)
    assert set(res.seconds) == set(res.robust) and all(t >= 0 for t in res.seconds.values())
    assert res.to_json()["accuracy"]["worst_case"] == res.accuracy()["worst_case"]
    indep = AutoAttack(EPS, version="custom", attacks=dict(aa.attacks), cascade=False).run(model, x, y)
    assert torch.equal(indep.worst, res.worst) and indep.cascaded == []


def test_autoattack_versions_and_errors():
    std = AutoAttack(EPS)
    assert list(std.attacks) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert std.attacks["apgd-ce"].restarts == 1 and std.attacks["apgd-ce"].steps == 100
    assert std.attacks["apgd-t"].n_target_classes == 9 and std.attacks["fab-t"].n_target_classes == 9
    assert std.attacks["fab-t"].multi_target and std.attacks["square"].n_queries == 5000
    plus = AutoAttack(EPS, version="plus")
    assert list(plus.attacks) == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert plus.attacks["apgd-ce"].restarts == 5 and plus.attacks["fab"].restarts == 5
    assert not plus.attacks["fab"].multi_target
    assert list(AutoAttack(EPS, version="custom", attacks=["square", "apgd-ce"]).attacks) == ["square", "apgd-ce"]
    with pytest.raises(RobustactError, match="version"):
        AutoAttack(EPS, version="fast")
    with pytest.raises(RobustactError, match="custom"):
        AutoAttack(EPS, attacks=["apgd-ce"])
    with pytest.raises(RobustactError, match="unknown AutoAttack component"):
        AutoAttack(EPS, version="custom", attacks=["pgd"])
    with pytest.raises(RobustactError, match="8/255"):
        APGD(8)


def test_apgdt_needs_four_classes():
    model = linear_model(3)
    x = images(4)
    with pytest.raises(RobustactError, match="4 classes"):
        APGDT(EPS, steps=2)(model, x, torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t", "fab-t", "fab", "square", "aa"])
def test_model_mode_and_requires_grad_restored(name):
    model = conv_model()
    model.train()
    model[0].weight.requires_grad_(False)
    before = [p.requires_grad for p in model.parameters()]
    stats = model[1].running_mean.clone()
    x = images(8)
    y = torch.zeros(8, dtype=torch.long)
    ATTACKS[name](EPS, "Linf")(model, x, y)
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == before
    assert torch.equal(model[1].running_mean, stats)  # attacked in eval mode: BN statistics untouched
    assert x.grad is None


class _Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_restarts_run_only_on_robust_points():
    """Everything falls in the first restart: more restarts must not cost a single extra forward."""
    counting = _Counting(conv_model())
    x = images(16)
    y = torch.zeros(16, dtype=torch.long)
    with torch.no_grad():
        y = (counting(x).argmax(1) + 1) % 10  # all misclassified: nothing to attack at all
    counting.calls = 0
    APGD(EPS, steps=10, restarts=1)(counting, x, y)
    one = counting.calls
    counting.calls = 0
    APGD(EPS, steps=10, restarts=5)(counting, x, y)
    assert counting.calls == one == 1
    counting.calls = 0
    APGD(0.5, steps=10, restarts=1)(counting, x, counting.inner(x).argmax(1))  # large eps: all fooled early
    one = counting.calls
    counting.calls = 0
    APGD(0.5, steps=10, restarts=5)(counting, x, counting.inner(x).argmax(1))
    assert counting.calls == one


# -- extra_loss: defenses' auxiliary logits ------------------------------------------------------------
class _AuxSite(DefenseSite):
    def __init__(self, channels: int, k: int) -> None:
        super().__init__()
        self.head = nn.Linear(channels, k)

    def forward(self, z):
        self.last_aux = self.head(z.mean(dim=(2, 3)))
        return z


def aux_model(k: int = 10) -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), _AuxSite(8, k), nn.Flatten(),
                         nn.Linear(8 * 64, k)).eval()


def aux_ce(model, logits, y):
    (aux,) = aux_logits(model)
    assert aux.shape == logits.shape and aux.shape[0] == y.shape[0]
    return 10.0 * F.cross_entropy(aux, y, reduction="none")


@pytest.mark.parametrize("make", [
    lambda **kw: APGD(EPS, steps=10, **kw),
    lambda **kw: APGD(EPS, steps=10, loss="dlr", **kw),
    lambda **kw: APGDT(EPS, steps=10, n_target_classes=2, **kw),
    lambda **kw: FAB(EPS, steps=10, n_target_classes=2, early_stop=False, **kw),
    lambda **kw: FAB(EPS, steps=10, targeted=False, early_stop=False, **kw),
    lambda **kw: PGD(EPS, steps=10, **kw),
    lambda **kw: AutoAttack(EPS, version="custom", attacks=["apgd-ce"], **kw),
], ids=["apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "fab", "pgd", "aa"])
def test_extra_loss_changes_gradient_attacks(make):
    model = aux_model()
    x = images(12)
    with torch.no_grad():
        y = model(x).argmax(1)
    plain = make()(model, x, y)
    with_aux = make(extra_loss=aux_ce)(model, x, y)
    assert not torch.equal(plain, with_aux)


def test_square_rejects_extra_loss():
    with pytest.raises(ValueError, match="gradient-free"):
        Square(EPS, extra_loss=aux_ce)
