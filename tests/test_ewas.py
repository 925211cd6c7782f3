"""EWAS: the per-element mask against an independent computation of METHODS.md §3, label vs predicted masks,
H/W from the network, checkpoints, TRADES/MART on both heads, the training attack's masks, the suites."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustact import build_model
from robustact.defenses import aux_logits, conditioned, sites
from robustact.defenses.spec import defense_spec
from robustact.errors import ConfigError
from robustact.training.objectives import ObjectiveContext, mart, pgd_at, trades


def _ewas(**kw):
    return build_model("resnet_small", defense="ewas", **kw).eval()


def _randomise(model):
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name
                        else torch.randn(t.shape, generator=g) * 0.3)
    return model


def _reference_forward(model, x, labels=None):
    """ResNet forward by hand, with METHODS.md §3 between layer4[0] and layer4[1]."""
    out = model.act(model.bn1(model.conv1(x)))
    out = model.layer3(model.layer2(model.layer1(out)))
    b0 = model.layer4[0]
    z = b0.act2(b0.bn2(b0.conv2(b0.act1(b0.bn1(b0.conv1(out))))) + b0.shortcut(out))
    site = b0.site
    w, b = site.head.weight, site.head.bias
    n, c, h, wd = z.shape
    a = z.reshape(n, -1) @ w.T + b
    k = labels if labels is not None else a.argmax(1)
    mask = w[k].reshape(n, c, h, wd)             # per element, raw weights, no bias
    out = model.layer4[1](z * mask)
    return model.linear(F.adaptive_avg_pool2d(out, 1).flatten(1)), a, mask


def test_one_site_with_per_element_mask_equal_to_the_weight_row():
    model = _randomise(_ewas())
    (site,) = sites(model)
    assert model.layer4[0].site is site and (site.channels, site.spatial) == (128, (4, 4))
    assert site.head.in_features == 128 * 4 * 4 and site.head.out_features == 10
    x, y = torch.rand(5, 3, 32, 32), torch.tensor([3, 1, 4, 1, 5])
    with torch.no_grad():
        with conditioned(model, y):
            logits = model(x)
            (aux,) = aux_logits(model)
        ref, ref_aux, ref_mask = _reference_forward(model, x, y)
        assert torch.allclose(logits, ref, atol=1e-5, rtol=1e-4)
        assert torch.allclose(aux, ref_aux, atol=1e-4, rtol=1e-4)
        # the mask differs per element (not one value per channel)
        assert ref_mask[0, 0].unique().numel() > 1
        logits = model(x)
        ref, _, _ = _reference_forward(model, x, None)
        assert torch.allclose(logits, ref, atol=1e-5, rtol=1e-4)


def test_training_forward_uses_the_label_test_forward_the_prediction():
    model = _randomise(_ewas())
    (site,) = sites(model)
    x = torch.rand(4, 3, 32, 32)
    used = []
    site.mask_rows = (lambda orig: (lambda a: used.append(site.mask_class(a).clone()) or orig(a)))(site.mask_rows)
    with torch.no_grad():
        model(x)
        pred_aux = aux_logits(model)[0].argmax(1)
        y = (pred_aux + 1) % 10
        with conditioned(model, y):
            model(x)
    assert torch.equal(used[0], pred_aux) and torch.equal(used[1], y)


def test_spatial_size_follows_the_network():
    assert sites(build_model("resnet_small", defense="ewas", defense_kwargs={"input_size": 64}))[0].spatial == (8, 8)
    m = build_model("wideresnet", depth=34, widen_factor=1, defense="ewas")
    (site,) = sites(m)
    assert m.block3.layer[1].site is site and (site.channels, site.spatial) == (64, (8, 8))
    assert site.head.in_features == 64 * 8 * 8
    m = build_model("wideresnet", depth=16, widen_factor=1, defense="ewas")  # 2 blocks per group
    assert m.block3.layer[0].site is sites(m)[0]
    with pytest.raises(RuntimeError, match="built for 4x4"):
        _ewas()(torch.rand(1, 3, 64, 64))


def test_checkpoint_round_trip(tmp_path):
    from robustact.checkpoints import load_model, save_weights

    model = _randomise(_ewas(num_classes=7))
    path = tmp_path / "ewas.safetensors"
    save_weights(model, path)
    loaded, _, _ = load_model(path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x))
    assert sites(loaded)[0].head.out_features == 7


def test_spec_defaults_and_options():
    spec = defense_spec(_ewas())
    assert (spec.aux_weight, spec.attack_aux_weight, spec.attack_masks, spec.mart_aux_kl_bug) == \
        (0.01, 0.01, "label", False)
    spec = defense_spec(_ewas(defense_kwargs={"predicted_mask_train_attack": True, "lam": 0.1}))
    assert spec.attack_masks == "pred" and spec.aux_weight == 0.1
    with pytest.raises(ConfigError, match="no placement for arch 'vgg16'"):
        build_model("vgg16", defense="ewas")


def _spy(model):
    seen = []
    handle = sites(model)[0].register_forward_pre_hook(
        lambda m, inp: seen.append((m.training, m.mask_mode, None if m.labels is None else m.labels.clone())))
    return seen, handle


def test_training_attack_uses_true_label_masks():
    model = _randomise(_ewas())
    seen, handle = _spy(model)
    y = torch.tensor([0, 1, 2])
    model.train()
    pgd_at(model, torch.rand(3, 3, 32, 32), y, ObjectiveContext(steps=2))
    handle.remove()
    assert seen[0][:2] == (False, "label") and torch.equal(seen[0][2], y)   # attack: eval mode, label masks
    assert seen[-1][:2] == (True, "label")                                  # training forward


def _kl(adv, nat):
    return F.kl_div(F.log_softmax(adv, 1), F.softmax(nat, 1), reduction="sum") / adv.shape[0]


def test_trades_on_both_heads_matches_the_formula():
    model = _randomise(_ewas())
    model.train()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    ctx = ObjectiveContext(steps=1)
    torch.manual_seed(5)
    loss, logits_adv = trades(model, x, y, ctx)
    # recompute from the same x_adv: the objective's last training forward is on x_adv
    torch.manual_seed(5)
    from robustact.training.objectives import trades_adversary_two_heads

    x_adv = trades_adversary_two_heads(model, x, y, ctx)
    with conditioned(model, y):
        nat = model(x)
        (aux_nat,) = aux_logits(model)
        adv = model(x_adv)
        (aux_adv,) = aux_logits(model)
    ref = (F.cross_entropy(nat, y) + 0.01 * F.cross_entropy(aux_nat, y)
           + 6.0 * (_kl(adv, nat) + 0.01 * _kl(aux_adv, aux_nat)))
    assert torch.allclose(loss, ref, rtol=1e-3)


def test_mart_on_both_heads_and_the_official_aux_kl_bug():
    from robustact.training.objectives import mart_parts

    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    ctx = ObjectiveContext(steps=1)
    losses = {}
    for bug in (False, True):
        model = _randomise(_ewas(defense_kwargs={"mart_aux_kl_bug": bug}))
        model.train()
        torch.manual_seed(3)
        losses[bug], _ = mart(model, x, y, ctx)
    assert losses[True] < losses[False]  # the buggy aux KL is ~0
    # the buggy aux KL term is exactly zero
    a = torch.randn(4, 10)
    _, kl = mart_parts(a, a, y, torch.full((4,), 0.5))
    assert abs(kl.item()) < 1e-5


def test_paper_suite_settings():
    from robustact.evaluation.suites import build_suite

    suite = build_suite("paper", _ewas(), 8 / 255)
    assert list(suite) == ["fgsm", "pgd20", "cw30"]
    f, p, c = suite["fgsm"], suite["pgd20"], suite["cw30"]
    assert (f.eps, f.alpha, f.random_start_) == (0.031, 0.031, True)
    assert (p.eps, p.steps, p.alpha, p.random_start_) == (0.031, 20, 0.031 / 4, True)
    assert (c.eps, c.steps, c.alpha, c.loss_name, c.kappa) == (0.031, 30, 0.031 / 4, "margin", 50.0)
    model = _randomise(_ewas())
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2])
    logits = model(x)
    (aux,) = aux_logits(model)
    from robustact.attacks.losses import margin_loss

    ref = margin_loss(logits, y, 50.0) + 0.01 * margin_loss(aux, y, 50.0)
    assert torch.allclose(c.loss(model, logits, y), ref, atol=1e-5)


def test_adaptive_suite_contents_and_surrogate_option(tmp_path):
    from robustact.checkpoints import save_weights
    from robustact.evaluation.suites import build_suite

    surrogate = tmp_path / "plain.safetensors"  # the protocol loads it when the suite is built
    save_weights(build_model("resnet_small", width=8), surrogate)
    options = {"steps": "4", "aa": "apgd-ce", "square_queries": "10", "surrogate": str(surrogate)}
    suite = build_suite("adaptive", _ewas(), 8 / 255, options=options)
    assert list(suite) == ["pgd4-b1", "pgd4-b10", "pgd4-b100", "pgd4-auxonly", "bpda-softmask", "kmask",
                           "twostage", "square", "transfer", "aa"]
    assert suite["square"].n_queries == 10
    assert "transfer" not in build_suite("adaptive", _ewas(), 8 / 255, options={"surrogate": str(tmp_path / "x")})
    assert "surrogate=" + str(surrogate) in repr(suite["transfer"])


def test_two_stage_attack_flips_the_aux_head_first():
    from robustact.attacks.adaptive import StagedPGD
    from robustact.attacks.aux import AuxTerm
    from robustact.attacks.losses import zero_loss as aux_only_loss

    model = _randomise(_ewas())
    losses = []
    attack = StagedPGD(8 / 255, stages=[(2, "zero", AuxTerm(1.0)), (3, "ce", AuxTerm(1.0))])
    orig = attack.loss

    def spy(m, logits, y):
        value = orig(m, logits, y)
        losses.append((attack.loss_fn is aux_only_loss, value.detach()))
        return value

    attack.loss = spy
    x = torch.rand(2, 3, 32, 32)
    x_adv = attack(model, x, torch.tensor([0, 1]))
    assert [a for a, _ in losses] == [True, True, False, False, False]
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6


def test_transfer_attack_crafts_on_the_surrogate():
    from robustact.attacks import PGD
    from robustact.attacks.wrappers import Transfer

    surrogate = build_model("resnet_small", width=8).eval()
    target = _ewas()
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    out = Transfer(PGD(8 / 255, steps=2), surrogate)(target, x, y)
    assert torch.allclose(out, PGD(8 / 255, steps=2)(surrogate, x, y))
