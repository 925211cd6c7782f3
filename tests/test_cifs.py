"""CIFS: the mask (closed form, autograd, sums, modes), no_grad / inference use, double backprop, placement,
the loss recipe, init_from, the paper/adaptive protocols and the relevance analysis."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustact import build_model
from robustact.defenses import aux_logits, conditioned, mask_mode, sites
from robustact.defenses.cifs import CIFSSite, cifs_sites, relevance_gradients
from robustact.defenses.spec import defense_spec
from robustact.errors import CheckpointError, ConfigError
from robustact.training.objectives import ObjectiveContext, pgd_at, supervised_loss


def _z(n=6, c=12, h=3, w=3):
    return torch.rand(n, c, h, w) * 2


def _site(probe="linear", **kw):
    site = CIFSSite(12, 5, probe, hidden=7, **kw)
    with torch.no_grad():  # larger weights so the softmax is far from uniform
        for p in site.parameters():
            p.mul_(4)
    return site


def _relevance_autograd(site: CIFSSite, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Independent computation: per example, the gradient of Σ_j s[t_j] w.r.t. its own z, summed over space."""
    out = []
    for i in range(z.shape[0]):
        zi = z[i:i + 1].clone().requires_grad_(True)
        s = site.probe(zi)
        (g,) = torch.autograd.grad(s[0, t[i]].sum(), zi)
        out.append(g.sum(dim=(2, 3))[0])
    return torch.stack(out)


def test_linear_mask_closed_form():
    site = _site("linear").eval()
    z = _z()
    out = site(z)
    w = site.probe[1].weight
    s = site.probe(z)
    t = s.topk(2, dim=1).indices
    expected = F.softmax(w[t[:, 0]] + w[t[:, 1]], dim=1)
    torch.testing.assert_close(site.last_mask, expected)
    torch.testing.assert_close(out, z * expected[:, :, None, None])
    torch.testing.assert_close(site.last_aux, s)


def test_label_mode_uses_y_and_second_prediction():
    site = _site("linear")
    z = _z()
    s = site.probe(z)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    site.mask_mode, site.labels = "label", y
    site(z)
    t2 = s.topk(2, dim=1).indices[:, 1]  # official: rank 2 of the probe even when it is y
    w = site.probe[1].weight
    torch.testing.assert_close(site.last_mask, F.softmax(w[y] + w[t2], dim=1))
    assert torch.equal(site.last_targets[:, 0], y)


@pytest.mark.parametrize("mode", ["pred", "label"])
def test_nonlinear_mask_matches_independent_autograd(mode):
    site = _site("nonlinear", T=0.5)
    z = _z()
    y = torch.tensor([4, 3, 2, 1, 0, 2])
    site.mask_mode, site.labels = mode, y
    site(z)
    g = _relevance_autograd(site, z, site.last_targets)
    torch.testing.assert_close(site.last_mask, F.softmax(g / 0.5, dim=1), rtol=1e-5, atol=1e-6)
    # and the closed form used under inference_mode agrees
    torch.testing.assert_close(site.relevance_closed_form(z, site.last_targets), g, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("probe", ["linear", "nonlinear"])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_mask_sums_to_scale(probe, scale):
    site = _site(probe, mask_scale=scale, k=3)
    site(_z())
    torch.testing.assert_close(site.last_mask.sum(1), torch.full((6,), scale))
    assert (site.last_mask > 0).all()


def test_no_grad_inference_mode_and_grad_give_same_logits():
    model = build_model("resnet_small", defense="cifs", width=8).eval()
    x = torch.rand(4, 3, 32, 32)
    with_grad = model(x)
    with torch.no_grad():
        no_grad = model(x)
    with torch.inference_mode():
        inference = model(x)
    assert not no_grad.requires_grad
    torch.testing.assert_close(no_grad, with_grad.detach())
    torch.testing.assert_close(inference.clone(), with_grad.detach(), rtol=1e-4, atol=1e-5)


def test_probe_gets_gradient_from_main_loss_through_mask():
    model = build_model("resnet_small", defense="cifs", width=8).train()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with conditioned(model, y):
        logits = model(x)
    F.cross_entropy(logits, y).backward()  # main loss only: the probe CE is not in it
    for site in cifs_sites(model):
        for name, p in site.probe.named_parameters():
            if name == "1.bias":
                continue  # the relevance does not depend on the last layer's bias
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_attack_gradient_through_relevance_only_when_asked():
    """detached (official): the input gradient ignores the mask's dependence on z; not detached: it does not."""
    torch.manual_seed(1)
    site = _site("nonlinear")
    z = _z().requires_grad_(True)
    for p in site.parameters():
        p.requires_grad_(False)
    (g_det,) = torch.autograd.grad(site(z).sum(), z)
    mask = site.last_mask
    torch.testing.assert_close(g_det, mask[:, :, None, None].expand_as(z))
    site.detach_for_mask = False
    (g_thru,) = torch.autograd.grad(site(z).sum(), z)
    assert not torch.allclose(g_thru, g_det)
    # the "soft" mask mode is the same thing
    site.detach_for_mask = True
    site.mask_mode = "soft"
    (g_soft,) = torch.autograd.grad(site(z).sum(), z)
    torch.testing.assert_close(g_soft, g_thru)


def test_relevance_gradients_context_restores():
    model = build_model("resnet_small", defense="cifs", width=8, detach_for_mask=True)
    cifs_sites(model)[1].detach_for_mask = False
    with relevance_gradients(model):
        assert [s.detach_for_mask for s in cifs_sites(model)] == [False, False]
    assert [s.detach_for_mask for s in cifs_sites(model)] == [True, False]


def test_placement_resnet_and_wrn():
    m = build_model("resnet_small", defense="cifs", width=8)
    s = sites(m)
    assert [x.kind for x in s] == ["nonlinear", "linear"]
    assert m.layer4[0].site is s[0] and m.layer4[1].site is s[1]
    assert s[0].probe[0].fc.out_features == 128
    w = build_model("wideresnet", depth=16, widen_factor=2, defense="cifs", mask_scale=2.0)
    ws = sites(w)
    assert w.block3.layer[-1].pre_site is ws[0] and w.final_site is ws[1]
    assert ws[0].probe[0].fc.out_features == 240 and ws[0].probe[0].fc.in_features == 128
    assert ws[1].mask_scale == 2.0
    x = torch.rand(2, 3, 32, 32)
    assert w(x).shape == (2, 10) and len(aux_logits(w)) == 2
    with pytest.raises(ConfigError, match="no placement"):
        build_model("vgg16", defense="cifs")
    with pytest.raises(ConfigError, match="does not take"):
        build_model("resnet_small", defense="cifs", temperature=2)
    with pytest.raises(ConfigError, match="probe"):
        build_model("resnet_small", defense="cifs", probes=["linear"])


def test_loss_weighting_is_official():
    model = build_model("resnet_small", defense="cifs", width=8, beta=2.0).train()
    spec = defense_spec(model)
    assert spec.name == "cifs" and spec.attack_masks == "pred" and spec.attack_aux_weight == 2.0
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with conditioned(model, y):
        logits = model(x)
    loss = supervised_loss(model, logits, y)
    ce = [F.cross_entropy(a, y) for a in aux_logits(model)]
    expected = 3 / 3 * (F.cross_entropy(logits, y) + (2 / 2) * (ce[0] + ce[1]))
    torch.testing.assert_close(loss, expected)


def test_pgd_at_step_and_state_restored():
    model = build_model("resnet_small", defense="cifs", width=8).train()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    loss, logits = pgd_at(model, x, y, ObjectiveContext(steps=2))
    loss.backward()
    assert model.training and all(s.mask_mode == "pred" and s.labels is None for s in sites(model))
    assert all(p.requires_grad for p in model.parameters())
    assert cifs_sites(model)[0].probe[0].fc.weight.grad is not None


def test_init_from(tmp_path):
    """CIFS-AT's official start from a clean-trained network is the trainer's `model.init_from` (any defense);
    here its loader, with the keys the trainer treats as optional (those the plain network lacks)."""
    from robustact.checkpoints import init_weights_from, save_weights

    src = build_model("resnet_small", defense="cifs", width=8)
    (tmp_path / "checkpoints").mkdir()
    save_weights(src, tmp_path / "checkpoints" / "last.safetensors")
    plain_keys = set(build_model("resnet_small", width=8).state_dict())

    def optional(key):
        return key not in plain_keys

    dst = build_model("resnet_small", defense="cifs", width=8)
    init_weights_from(dst, tmp_path, optional, which="last")
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k
    plain = build_model("resnet_small", width=8)
    save_weights(plain, tmp_path / "plain.safetensors")
    dst2 = build_model("resnet_small", defense="cifs", width=8)
    init_weights_from(dst2, tmp_path / "plain.safetensors", optional)
    torch.testing.assert_close(dst2.conv1.weight, plain.conv1.weight)
    save_weights(build_model("resnet_small", width=16), tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="does not fit"):
        init_weights_from(build_model("resnet_small", defense="cifs", width=8), tmp_path / "other.safetensors",
                          optional)
    with pytest.raises(ConfigError, match="does not take init_from"):  # no longer a defense option
        build_model("resnet_small", defense="cifs", width=8, init_from=str(tmp_path))


def test_protocols_run_and_restore():
    from robustact.evaluation.protocols.cifs import build_adaptive, build_paper, reduced_autoattack
    from robustact.evaluation.suites import build_suite

    model = build_model("resnet_small", defense="cifs", width=8).eval()
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2])
    paper = build_suite("paper", model, 8 / 255, options={"square_queries": "7"})
    adaptive = build_suite("adaptive", model, 8 / 255, options={"steps": "3"})
    assert set(paper) == {"fgsm", "pgd20", "pgd100", "cw30", "aa-cifs"}
    assert paper["aa-cifs"].attacks["square"].n_queries == 7 and adaptive["ce-thru"].attack.steps == 3
    assert {"ce-thru", "joint-b10-thru", "probe-only-thru", "top2-switch-thru", "aa"} <= set(adaptive)
    cheap = build_paper(model, 8 / 255, include_aa=False)
    cheap["pgd20"].steps = 2
    cheap |= {"aa-cifs": reduced_autoattack(8 / 255, n_queries=5)}
    cheap["aa-cifs"].attacks["apgd-ce"].steps = 3
    thru = build_adaptive(model, 8 / 255, steps=2, include_aa=False)
    for attack in [cheap["fgsm"], cheap["pgd20"], cheap["aa-cifs"], thru["top2-switch-thru"],
                   thru["probe-only-thru"]]:
        x_adv = attack(model, x, y)
        assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
        assert [s.detach_for_mask for s in cifs_sites(model)] == [True, True]
        assert not model.training
    # on a plain model the protocol is the plain attacks (the joint terms vanish)
    plain = build_model("resnet_small", width=8).eval()
    assert build_paper(plain, 8 / 255, include_aa=False)["pgd20"](plain, x, y).shape == x.shape
    assert set(build_suite("paper", plain, 8 / 255, protocol="cifs")) == set(paper)


def test_relevance_analysis(tmp_path, monkeypatch):
    """The analysis end to end on two tiny runs with synthetic test data."""
    from robustact.analysis import AnalysisOptions, run_analysis
    from robustact.analysis import relevance as rel
    from robustact.checkpoints import save_weights

    runs = []
    for name, defense in [("at", None), ("cifs", "cifs")]:
        run = tmp_path / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.yaml").write_text("data: {dataset: cifar10}\n")
        save_weights(build_model("resnet_small", defense=defense, width=8),
                     run / "checkpoints" / "last.safetensors")
        runs.append(run)
    fake_x = (torch.rand(20, 3, 32, 32) * 255).to(torch.uint8)
    fake_y = torch.arange(20) % 10
    monkeypatch.setattr("robustact.evaluation.runner.test_split", lambda *a, **k: (fake_x, fake_y))
    monkeypatch.setattr(rel, "_adversary", lambda model, eps, seed: (lambda m, x, y: (x + eps).clamp(0, 1)))
    written = run_analysis("relevance", runs, AnalysisOptions(out=tmp_path / "out", class_idx=3, n=20, which="last"))
    names = sorted(p.name for p in written)
    assert names == ["relevance-at-class3.csv", "relevance-cifs-class3.csv", "relevance-class3.png",
                     "relevance-summary-class3.csv"]
    rows = (tmp_path / "out" / "relevance-cifs-class3.csv").read_text().splitlines()
    assert rows[0].endswith("adv_mean_before_last_mask") and len(rows) == 1 + 64
    weights = [float(r.split(",")[2]) for r in rows[1:]]
    assert weights == sorted(weights, reverse=True)


def test_mask_mode_context_applies():
    model = build_model("resnet_small", defense="cifs", width=8).eval()
    with mask_mode(model, "soft"):
        assert all(s.mask_mode == "soft" for s in sites(model))
    assert all(s.mask_mode == "pred" for s in sites(model))
