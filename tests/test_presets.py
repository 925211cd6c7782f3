"""Every preset resolves (base chain, known keys), builds its model with its defense and activation on the
data's number of classes, and sets up its optimizer: a typo in a preset fails here, not hours into a run."""

from __future__ import annotations

import pytest
import torch

from robustact.config import list_presets, load_preset, resolve
from robustact.data import num_classes_of
from robustact.models.activations import learnable_activations
from robustact.training.objectives import get_objective
from robustact.training.schedules import lr_at
from robustact.training.trainer import build_model_from_config, parameter_groups


def test_there_are_presets_for_every_paper():
    names = list_presets()
    for prefix in ("cas-", "cifs-", "ewas-", "sparta-", "pgd-at-", "trades-", "mart-", "fgsm-rs-"):
        assert any(n.startswith(prefix) for n in names), prefix


@pytest.mark.parametrize("name", list_presets())
def test_preset_builds(name):
    config = resolve(load_preset(name))  # typed: every key known, every value checked
    assert config.description, f"{name} has no description"
    m, training = config.model, config.training
    torch.manual_seed(0)
    model = build_model_from_config(config)
    assert model.classifier_layer().out_features == num_classes_of(config.data.dataset, config.data.classes)
    assert (m.defense is None) == (getattr(model, "defense_spec", None) is None)
    if str(m.activation).startswith(("sparta", "pssilu", "{'name': 'sparta'")):
        assert learnable_activations(model)
    get_objective(training.objective)
    groups = parameter_groups(model, training.optimizer.activation_weight_decay)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert lr_at(training.schedule, 0.1, 0.0, training.epochs) >= 0
