"""Frozen transfer of Sparta activations (our reconstruction): mapping, exact copies, freezing, trainer hook."""

from __future__ import annotations

import pytest
import torch

from robustact import build_model
from robustact.config import DEFAULTS, apply_overrides, deep_merge
from robustact.errors import ConfigError
from robustact.models.activations import learnable_activations
from robustact.models.sparta import frozen_parameter_names, map_sites, site_key, transfer_activations


def _randomised(model):
    with torch.no_grad():
        for _, m in learnable_activations(model):
            for p in m.parameters():
                p.normal_()
    return model


def test_site_key():
    assert site_key("layer3.4.act1") == ("layer3", 4, "act1")
    assert site_key("block2.layer.3.relu2") == ("block2.layer", 3, "relu2")
    assert site_key("act") == ("act", None, "")
    assert site_key("layers.12") == ("layers", 12, "")


def test_resnet18_to_resnet34_mapping_covers_every_site():
    src = _randomised(build_model("resnet18", activation="sparta", width=8))
    dst = build_model("resnet34", activation="sparta", width=8)
    dst_sites = dict(learnable_activations(dst))
    pairs = transfer_activations(src, dst)
    assert set(pairs) == set(dst_sites) and len(pairs) == 1 + 2 * (3 + 4 + 6 + 3)
    assert pairs["act"] == "act"
    assert pairs["layer2.0.act1"] == "layer2.0.act1" and pairs["layer2.1.act2"] == "layer2.1.act2"
    for i in (2, 3):  # the extra blocks of a stage reuse that stage's last block
        assert pairs[f"layer2.{i}.act1"] == "layer2.1.act1" and pairs[f"layer2.{i}.act2"] == "layer2.1.act2"
    assert pairs["layer3.5.act2"] == "layer3.1.act2"
    src_sites = dict(learnable_activations(src))
    for d, s in pairs.items():
        for (kd, pd), (ks, ps) in zip(dst_sites[d].state_dict().items(), src_sites[s].state_dict().items()):
            assert kd == ks and torch.equal(pd, ps)
    # modules are copied, not shared
    assert dst_sites["layer2.2.act1"].weight is not dst_sites["layer2.3.act1"].weight


def test_transfer_copies_exactly_the_mapped_parameters_and_freezes_them():
    src = _randomised(build_model("resnet_small", activation="sparta"))
    dst = build_model("resnet_small", activation="sparta")
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    transfer_activations(src, dst, mapping="exact")
    act_names = {f"{n}.{p}" for n, m in learnable_activations(dst) for p, _ in m.named_parameters()}
    src_state = src.state_dict()
    for k, v in dst.state_dict().items():
        if k in act_names:
            assert torch.equal(v, src_state[k])
        else:
            assert torch.equal(v, before[k])  # nothing else touched (BN, convs, linear)
    assert set(frozen_parameter_names(dst)) == act_names
    assert all(p.requires_grad for n, p in dst.named_parameters() if n not in act_names)


def test_frozen_activations_unchanged_by_sgd_with_weight_decay():
    from robustact.training.objectives import ObjectiveContext, get_objective

    src = _randomised(build_model("resnet_small", activation="sparta", width=4))
    dst = build_model("resnet_small", activation="sparta", width=4)
    transfer_activations(src, dst)
    frozen = {n: p.detach().clone() for n, p in dst.named_parameters() if not p.requires_grad}
    others = {n: p.detach().clone() for n, p in dst.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD(dst.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-2, nesterov=True)
    ctx = ObjectiveContext(eps=8 / 255, alpha=2 / 255, steps=2, random_start=True)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(2):  # PGD-AT steps, the trainer's loop body
        dst.train()
        loss, _ = get_objective("pgd_at")(dst, x, y, ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    params = dict(dst.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert all(params[n].grad is None for n in frozen)
    changed = [n for n, v in others.items() if not torch.equal(params[n], v)]
    assert len(changed) == len(others)  # everything else trains


def test_unfrozen_transfer_stays_trainable():
    src = _randomised(build_model("resnet_small", activation="pssilu", width=4))
    dst = build_model("resnet_small", activation="pssilu", width=4)
    transfer_activations(src, dst, freeze=False)
    assert not frozen_parameter_names(dst)
    assert torch.equal(dst.layer1[0].act1.alpha, src.layer1[0].act1.alpha)


def test_shared_kernel_transfers_across_widths():
    src = _randomised(build_model("resnet_small", activation="sparta_shared", width=4))
    dst = build_model("resnet_small", activation="sparta_shared", width=8)
    transfer_activations(src, dst)
    s, d = src.layer2[1].act1, dst.layer2[1].act1
    assert torch.equal(d.weight, s.weight)
    torch.testing.assert_close(d.scale, torch.full_like(d.scale, s.scale.mean().item()))
    with pytest.raises(ConfigError, match="equal widths"):
        transfer_activations(build_model("resnet_small", activation="sparta", width=4),
                             build_model("resnet_small", activation="sparta", width=8))


def test_bad_transfers_fail_with_one_clear_error(tmp_path):
    sparta = build_model("resnet_small", activation="sparta", width=4)
    with pytest.raises(ConfigError, match="no learnable activations to receive"):
        transfer_activations(sparta, build_model("resnet_small", width=4))
    with pytest.raises(ConfigError, match="has no learnable activations"):
        transfer_activations(build_model("resnet_small", width=4), sparta)
    with pytest.raises(ConfigError, match="same Sparta variant"):
        transfer_activations(sparta, build_model("resnet_small", activation={"name": "sparta", "kernel_size": 5},
                                                 width=4))
    with pytest.raises(ConfigError, match="cannot transfer"):
        transfer_activations(sparta, build_model("resnet_small", activation="pssilu", width=4))
    with pytest.raises(ConfigError, match="exact activation mapping"):
        transfer_activations(build_model("resnet18", activation="sparta", width=4),
                             build_model("resnet34", activation="sparta", width=4), mapping="exact")
    with pytest.raises(ConfigError, match="mapping must be"):
        map_sites(["act"], ["act"], mapping="nearest")
    from robustact.training import Trainer  # a source path is the trainer's to resolve

    with pytest.raises(ConfigError, match="activation_from=RUN"):
        Trainer.transfer_activations_from(None, str(tmp_path / "missing"))


def test_config_has_transfer_defaults():
    cfg = deep_merge(DEFAULTS, {})
    assert cfg["model"]["activation_from"] is None
    cfg = apply_overrides(cfg, ["model.activation_from=/some/run", "model.activation_freeze=false"])
    assert cfg["model"]["activation_from"] == "/some/run" and cfg["model"]["activation_freeze"] is False


def test_trainer_hook_transfers_from_a_run_and_freezes(tmp_path, monkeypatch):
    """`--set model.activation_from=RUN`: the Trainer copies the source run's Sparta modules and freezes them."""
    import robustact.training.trainer as trainer_mod
    from robustact.checkpoints import save_weights
    from robustact.data import RunData

    src = _randomised(build_model("resnet_small", activation="sparta", width=4, num_classes=5))
    save_weights(src, tmp_path / "src.safetensors")
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(16) % 5
    monkeypatch.setattr(trainer_mod, "training_split", lambda *a, **k: RunData(x, y, x[:0], y[:0], 5))
    cfg = deep_merge(DEFAULTS, {"device": "cpu", "data": {"classes": [5, 6, 7, 8, 9], "batch_size": 8},
                                "model": {"arch": "resnet_small", "arch_kwargs": {"width": 4},
                                          "activation": "sparta"},
                                "training": {"epochs": 1, "val_n": 0, "attack": {"steps": 1}}})
    cfg = apply_overrides(cfg, [f"model.activation_from={tmp_path / 'src.safetensors'}"])
    torch.manual_seed(123)
    t = trainer_mod.Trainer(cfg, tmp_path / "run", progress=False)
    frozen = frozen_parameter_names(t.model)
    assert frozen and all(".act" in n or n.startswith("act.") for n in frozen)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.train_epoch(0)
    after = dict(t.model.named_parameters())
    src_state = src.state_dict()
    for n in frozen:
        assert torch.equal(after[n], before[n]) and torch.equal(after[n].detach().cpu(), src_state[n])
    assert not torch.equal(after["conv1.weight"], before["conv1.weight"])
    # loading the source consumed no RNG: the target's init equals a run without transfer
    torch.manual_seed(123)
    cfg_plain = apply_overrides(cfg, ["model.activation_from=null"])
    t2 = trainer_mod.Trainer(cfg_plain, tmp_path / "run2", progress=False)
    assert torch.equal(before["conv1.weight"], t2.model.conv1.weight)
