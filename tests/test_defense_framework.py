"""The defense framework every defense uses: logits-only forward, the context API, the registry,
`DefenseSpec` in the objectives, and backwards compatibility for plain models."""

from __future__ import annotations

import pytest
import torch

from robustact import build_model
from robustact.defenses import aux_logits, conditioned, list_defenses, mask_mode, sites
from robustact.defenses.spec import NO_DEFENSE, defense_spec
from robustact.errors import ConfigError


@pytest.mark.parametrize("defense", ["cas", "ewas"])
def test_forward_returns_logits_only_and_aux_in_site_order(defense):
    model = build_model("resnet_small", defense=defense).eval()
    out = model(torch.rand(3, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (3, 10)
    heads = aux_logits(model)
    assert len(heads) == len(sites(model)) and all(h.shape == (3, 10) for h in heads)
    assert [h.data_ptr() for h in heads] == [s.last_aux.data_ptr() for s in sites(model)]


def test_contexts_set_and_restore_mask_modes():
    model = build_model("resnet_small", defense="cas").eval()
    y = torch.tensor([1, 2])
    assert all(s.mask_mode == "pred" and s.labels is None for s in sites(model))
    with conditioned(model, y):
        assert all(s.mask_mode == "label" and s.labels is y for s in sites(model))
        with mask_mode(model, "soft"):
            assert all(s.mask_mode == "soft" for s in sites(model))
        assert all(s.mask_mode == "label" for s in sites(model))
    assert all(s.mask_mode == "pred" and s.labels is None for s in sites(model))
    with pytest.raises(ValueError, match="mask_mode must be one of"):
        with mask_mode(model, "hard"):
            pass


def test_label_mode_without_labels_is_a_clear_error():
    model = build_model("resnet_small", defense="cas").eval()
    for s in sites(model):
        s.mask_mode = "label"
    with pytest.raises(RuntimeError, match="conditioned"):
        model(torch.rand(1, 3, 32, 32))


def test_registry_and_plain_models():
    assert {"cas", "ewas"} <= set(list_defenses())
    plain = build_model("resnet_small")
    assert sites(plain) == [] and defense_spec(plain) is NO_DEFENSE
    plain(torch.rand(1, 3, 32, 32))
    assert aux_logits(plain) == []
    assert build_model("resnet_small", defense="none").build_kwargs["defense"] is None
    with pytest.raises(ConfigError, match="unknown defense"):
        build_model("resnet_small", defense="cass")


def test_build_kwargs_rebuild_the_same_defended_model():
    model = build_model("resnet_small", num_classes=5, defense="ewas", defense_kwargs={"lam": 0.05})
    again = build_model(model.arch, **model.build_kwargs)
    assert defense_spec(again).aux_weight == 0.05
    assert model.state_dict().keys() == again.state_dict().keys()


def test_objectives_unchanged_for_plain_models():
    """The two-head TRADES/MART paths only switch on with `aux_in_objective`; a plain model's loss is the
    textbook one."""
    import copy

    import torch.nn.functional as F

    from robustact.training.objectives import ObjectiveContext, mart, mart_loss, trades, trades_adversary

    model = build_model("resnet_small", width=8)
    model.train()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    ctx = ObjectiveContext(steps=1)
    fresh = copy.deepcopy(model)  # train-mode forwards move the BN statistics: recompute on a fresh copy
    torch.manual_seed(0)
    loss, _ = trades(model, x, y, ctx)
    torch.manual_seed(0)
    x_adv = trades_adversary(fresh, x, ctx)
    nat, adv = fresh(x), fresh(x_adv)
    ref = F.cross_entropy(nat, y) + 6.0 * F.kl_div(F.log_softmax(adv, 1), F.softmax(nat, 1), reduction="batchmean")
    assert torch.allclose(loss, ref, rtol=1e-4)
    torch.manual_seed(0)
    loss, logits_adv = mart(model, x, y, ctx)
    assert torch.allclose(loss, mart_loss(logits_adv, model(x), y, 6.0), rtol=1e-3)
