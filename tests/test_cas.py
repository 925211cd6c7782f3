"""CAS: the site against an independent computation of METHODS.md §1, placement, loss, training attack,
paper/adaptive suites, channel analysis, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_cifar

from robustact import build_model
from robustact.defenses import aux_logits, conditioned, mask_mode, sites
from robustact.defenses.linear_mask import LinearMaskSite
from robustact.defenses.spec import defense_spec
from robustact.errors import CheckpointError, ConfigError
from robustact.training.objectives import ObjectiveContext, pgd_at, supervised_loss


def _cas(num_classes: int = 10, **kw):
    return build_model("resnet_small", num_classes=num_classes, defense="cas", **kw).eval()


def _randomise(model):
    """Random, non-degenerate weights everywhere (BN statistics included)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                if "running_var" in name:
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.3)
    return model


def _reference_forward(model, x, labels=None):
    """ResNet forward written out by hand with the CAS site of METHODS.md §1 on each layer4 block."""
    out = model.act(model.bn1(model.conv1(x)))
    out = model.layer3(model.layer2(model.layer1(out)))
    aux = []
    for block in model.layer4:
        h = block.act1(block.bn1(block.conv1(out)))
        z = block.act2(block.bn2(block.conv2(h)) + block.shortcut(out))
        site = block.site
        w, b = site.head.weight, site.head.bias
        a = z.mean(dim=(2, 3)) @ w.T + b
        k = labels if labels is not None else a.argmax(1)
        m = w[k]                                     # raw signed weight row, (N, C)
        out = z * m[:, :, None, None]
        aux.append(a)
    logits = model.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))
    return logits, aux


def test_site_matches_reference_computation_train_and_test_masks():
    model = _randomise(_cas())
    x = torch.rand(6, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3, 4, 9])
    with torch.no_grad():
        with conditioned(model, y):
            logits = model(x)
            aux = aux_logits(model)
        ref_logits, ref_aux = _reference_forward(model, x, y)
        assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=1e-4)
        for a, r in zip(aux, ref_aux):
            assert torch.allclose(a, r, atol=1e-5, rtol=1e-4)
        logits = model(x)  # test forward: the aux head's own prediction
        ref_logits, ref_aux = _reference_forward(model, x, None)
        assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=1e-4)
        assert [a.shape for a in aux_logits(model)] == [(6, 10), (6, 10)]
        # the test forward differs from the label forward where the aux prediction is not the label
        assert not torch.allclose(model(x), _reference_forward(model, x, (y + 1) % 10)[0])


def test_loss_is_ce_plus_beta_over_s_sum_of_aux_ce():
    model = _randomise(_cas())
    x, y = torch.rand(5, 3, 32, 32), torch.tensor([1, 2, 3, 4, 5])
    with conditioned(model, y):
        logits = model(x)
    loss = supervised_loss(model, logits, y)
    ref_logits, ref_aux = _reference_forward(model, x, y)
    ref = F.cross_entropy(ref_logits, y) + (2.0 / 2) * sum(F.cross_entropy(a, y) for a in ref_aux)
    assert torch.allclose(loss, ref, rtol=1e-4)


def test_main_loss_reaches_aux_weights_through_the_mask():
    model = _randomise(_cas())
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([2, 2, 5, 7])
    model.train()
    with conditioned(model, y):
        loss = F.cross_entropy(model(x), y)  # the main CE only, no aux CE
    loss.backward()
    for site in sites(model):
        g = site.head.weight.grad
        assert g is not None
        rows = g.abs().sum(1)
        assert (rows[[2, 5, 7]] > 0).all()  # the label rows act as masks
        assert torch.all(rows[[0, 1, 3, 4, 6, 8, 9]] == 0)
        assert site.head.bias.grad is None or torch.all(site.head.bias.grad == 0)


def test_soft_mode_is_hard_forward_with_gradient_through_the_aux_head():
    model = _randomise(_cas())
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        hard = model(x)
    with mask_mode(model, "soft"):
        for s in sites(model):
            s.temperature = 0.5
        xs = x.clone().requires_grad_(True)
        soft = model(xs)
        (g_soft,) = torch.autograd.grad(soft.sum(), xs)
    assert torch.allclose(soft, hard, atol=1e-5)
    xh = x.clone().requires_grad_(True)
    (g_hard,) = torch.autograd.grad(model(xh).sum(), xh)
    assert not torch.allclose(g_soft, g_hard)


def test_soft_mask_backward_is_softmax_weighted_rows():
    site = LinearMaskSite(4, 3, "channel")
    site.set_mask_mode("soft")
    site.temperature = 2.0
    z = torch.rand(2, 4, 3, 3)
    a = site.head(z.mean(dim=(2, 3)))
    m = site.mask_rows(a)
    ref_soft = F.softmax(a / 2.0, 1) @ site.head.weight
    assert torch.allclose(m, site.head.weight[a.argmax(1)])
    # w.r.t. W: the hard rows' gradient (value path) plus the soft mask's (straight-through path)
    (g,) = torch.autograd.grad((m * torch.arange(4.0)).sum(), site.head.weight, retain_graph=True)
    (g_soft,) = torch.autograd.grad((ref_soft * torch.arange(4.0)).sum(), site.head.weight)
    hard_part = torch.zeros_like(g_soft)
    for k in a.argmax(1):
        hard_part[k] += torch.arange(4.0)
    assert torch.allclose(g, g_soft + hard_part, atol=1e-5)
    # w.r.t. the aux logits: exactly the soft mask's gradient
    a2 = a.detach().requires_grad_(True)
    (ga,) = torch.autograd.grad((site.mask_rows(a2) * torch.arange(4.0)).sum(), a2)
    (ga_ref,) = torch.autograd.grad(((F.softmax(a2 / 2.0, 1) @ site.head.weight) * torch.arange(4.0)).sum(), a2)
    assert torch.allclose(ga, ga_ref, atol=1e-6)


@pytest.mark.parametrize("arch,kwargs,channels", [
    ("resnet18", {}, [512, 512]),
    ("resnet34", {}, [512, 512, 512]),
    ("resnet_small", {}, [128, 128]),
    ("wideresnet", {"depth": 34, "widen_factor": 1}, [64, 64]),
    ("vgg16", {}, [512, 512, 512]),
])
def test_placement_per_architecture(arch, kwargs, channels):
    model = build_model(arch, num_classes=7, defense="cas", **kwargs)
    found = sites(model)
    assert [s.channels for s in found] == channels
    assert all(s.num_classes == 7 and s.pooling == "channel" for s in found)
    if arch == "wideresnet":
        assert model.block3.layer[-1].pre_site is found[0] and model.final_site is found[1]
    elif arch == "vgg16":
        assert list(model.slots[-1]) == found
    else:
        assert [b.site for b in model.layer4] == found
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_spec_and_options():
    spec = defense_spec(_cas())
    assert (spec.name, spec.aux_weight, spec.attack_aux_weight, spec.attack_masks, spec.train_masks) == \
        ("cas", 2.0, 2.0, "pred", "label")
    assert not spec.aux_only_train_attack and spec.aux_in_objective
    spec = defense_spec(_cas(defense_kwargs={"beta": 1.5, "aux_only_train_attack": True}))
    assert spec.aux_weight == 1.5 and spec.attack_aux_weight == 1.5 and spec.aux_only_train_attack


def test_training_attack_runs_in_eval_mode_with_predicted_masks_on_the_joint_loss():
    model = _randomise(_cas())
    seen = []
    hook = sites(model)[0].register_forward_pre_hook(
        lambda m, inp: seen.append((m.training, m.mask_mode, m.labels is not None)))
    model.train()
    ctx = ObjectiveContext(steps=2)
    loss, _ = pgd_at(model, torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), ctx)
    hook.remove()
    assert seen[:2] == [(False, "pred", False)] * 2        # the two attack steps
    assert seen[2] == (True, "label", True)                # the training forward
    assert torch.isfinite(loss)


def test_aux_only_train_attack_flag_zeroes_the_main_term():
    from robustact.training.objectives import training_attack

    model = _cas(defense_kwargs={"aux_only_train_attack": True})
    attack = training_attack(model, ObjectiveContext(steps=1)).attack  # the PGD inside the mask-mode wrapper
    logits = torch.randn(3, 10)
    assert torch.all(attack.loss_fn(logits, torch.tensor([0, 1, 2])) == 0)
    assert training_attack(_cas(), ObjectiveContext(steps=1)).attack.loss_name == "ce"  # built, not mutated


def test_paper_suite_settings():
    from robustact.evaluation.suites import build_suite

    suite = build_suite("paper", _cas(), 8 / 255)
    assert list(suite) == ["fgsm", "pgd20", "cw20"]
    pgd, cw, fgsm = suite["pgd20"], suite["cw20"], suite["fgsm"]
    assert (pgd.eps, pgd.steps, pgd.alpha, pgd.random_start_) == (0.031, 20, 0.003, True)
    assert (cw.eps, cw.steps, cw.alpha, cw.loss_name, cw.kappa) == (0.031, 20, 0.003, "margin", 0.0)
    assert fgsm.random_start_ and fgsm.alpha == fgsm.eps == 8 / 255
    # the joint loss: CE_final + 2·mean CE_aux
    model = _randomise(_cas())
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2])
    logits = model(x)
    ref = F.cross_entropy(logits, y, reduction="none") + 2.0 * torch.stack(
        [F.cross_entropy(a, y, reduction="none") for a in aux_logits(model)]).mean(0)
    assert torch.allclose(pgd.loss(model, logits, y), ref, atol=1e-5)


def test_adaptive_suite_contents():
    from robustact.errors import RobustactError
    from robustact.evaluation.suites import build_suite

    suite = build_suite("adaptive", _cas(), 8 / 255, options={"steps": "5", "aa": "apgd-ce"})
    assert list(suite) == ["pgd5-b0", "pgd5-b0.1", "pgd5-b1", "pgd5-b10", "pgd5-b100", "pgd5-auxonly",
                           "bpda-softmask", "kmask", "aa"]
    assert suite["pgd5-b10"].steps == 5
    with pytest.raises(RobustactError, match="no option 'nonsense'"):
        build_suite("adaptive", _cas(), 8 / 255, options={"nonsense": "1"})
    with pytest.raises(RobustactError, match="positive integer"):
        build_suite("adaptive", _cas(), 8 / 255, options={"steps": "many"})
    with pytest.raises(RobustactError, match="no option"):
        build_suite("paper", _cas(), 8 / 255, options={"steps": "5"})


def test_mask_enumeration_fixes_each_class_mask_and_pulls_aux_toward_it():
    from robustact.attacks.aux import AuxTerm
    from robustact.attacks.wrappers import EnumerateMasks

    model = _randomise(_cas(num_classes=4))
    calls = []

    def make(k):
        def run(m, x, y):  # records the masks it runs under; fools nobody, so every class gets tried
            calls.append((k.clone(), [s.mask_mode for s in sites(m)], [s.labels.clone() for s in sites(m)]))
            return x
        return run

    x = torch.rand(3, 3, 32, 32)
    y = model(x).argmax(1)
    EnumerateMasks(make)(model, x, y)
    assert len(calls) == 4
    for k, modes, labels in calls:
        assert modes == ["label", "label"] and all(torch.equal(lab, k) for lab in labels)
    assert all(s.mask_mode == "pred" and s.labels is None for s in sites(model))  # restored
    tried = torch.stack([c[0] for c in calls], 1)
    assert all(sorted(row.tolist()) == [0, 1, 2, 3] for row in tried)
    # the attack it is meant for: the aux term pulls toward k (negated CE to the target classes)
    extra = AuxTerm(1.0, toward=torch.tensor([1, 2, 3]))
    model(x)
    ref = -torch.stack([F.cross_entropy(a, torch.tensor([1, 2, 3]), reduction="none")
                        for a in aux_logits(model)]).mean(0)
    assert torch.allclose(extra(model, None, y), ref, atol=1e-6)


def test_soft_mask_pgd_anneals_the_temperature_and_restores_it():
    from robustact.attacks.adaptive import SoftMaskPGD

    model = _randomise(_cas())
    temps = []
    hook = sites(model)[0].register_forward_pre_hook(lambda m, inp: temps.append((m.mask_mode, m.temperature)))
    attack = SoftMaskPGD(8 / 255, steps=3, t_start=8.0, t_end=0.5)
    attack(model, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
    hook.remove()
    assert [t for _, t in temps] == pytest.approx([8.0, 2.0, 0.5])
    assert all(mode == "soft" for mode, _ in temps)
    assert sites(model)[0].temperature == 1.0 and sites(model)[0].mask_mode == "pred"


def test_channel_stats_threshold_frequency_and_true_mean():
    from robustact.analysis.channels import channel_stats

    values = torch.tensor([[10.0, 0.05, 0.2, 0.0], [1.0, 0.005, 1.0, 0.5]])
    s = channel_stats(values)
    assert s["freq"].tolist() == [2, 0, 2, 1]          # > 1% of each image's max: 0.1 and 0.01
    assert torch.allclose(s["mean"], values.mean(0))
    assert torch.allclose(s["mean_active"], torch.tensor([5.5, 0.0, 0.6, 0.5]))


def test_bad_input_errors():
    with pytest.raises(ConfigError, match="unknown defense 'nope'"):
        build_model("resnet_small", defense="nope")
    with pytest.raises(ConfigError, match="no placement for arch 'preact_resnet18'"):
        build_model("preact_resnet18", defense="cas")
    with pytest.raises(ConfigError, match="does not take"):
        build_model("resnet_small", defense="cas", defense_kwargs={"betta": 2})
    from robustact.checkpoints.weights import load_weights_into, state_dict_for_saving

    with pytest.raises(CheckpointError, match="unexpected"):
        load_weights_into(build_model("resnet_small"), state_dict_for_saving(_cas()), "cas.safetensors")
    with pytest.raises(CheckpointError, match="missing"):
        load_weights_into(_cas(), state_dict_for_saving(build_model("resnet_small")), "plain.safetensors")


@requires_cifar
def test_channel_analysis_writes_png_and_csv(tmp_path):
    import csv

    import yaml

    from robustact.analysis import AnalysisOptions, run_analysis
    from robustact.checkpoints import save_weights

    runs = []
    for name, defense in (("plain", None), ("cas", "cas")):
        run = tmp_path / name
        (run / "checkpoints").mkdir(parents=True)
        model = build_model("resnet_small", defense=defense, width=8)
        save_weights(model, run / "checkpoints" / "last.safetensors")
        (run / "config.yaml").write_text(yaml.safe_dump({"data": {"dataset": "cifar10"}}))
        runs.append(run)
    out = tmp_path / "fig"
    written = run_analysis("channels", runs, AnalysisOptions(out=out, class_idx=3, n=40, which="last"))
    assert {p.name for p in written} == {"channels_class3.png", "channels_class3.csv"}
    rows = list(csv.DictReader(open(out / "channels_class3.csv")))
    assert {r["model"] for r in rows} == {"plain", "cas"} and len(rows) == 2 * 64
