"""Run configuration: presets are YAML data; `--set a.b=value` overrides; numbers may be written `8/255`."""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from robustact.errors import ConfigError

_FRACTION = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")

# Every run config has these sections; a preset fills in what it changes.
DEFAULTS: dict[str, Any] = {
    "name": "custom",
    "description": "",
    "seed": 0,
    "device": "auto",
    "data": {
        "dataset": "cifar10",
        "train_subset": None,      # stratified subset of the training split (None = all)
        "val_size": 1000,          # held out from train for per-epoch validation and model selection
        "batch_size": 128,
        "augment": True,           # pad-4 random crop + horizontal flip, on the device
        "classes": None,           # train/test on these classes only (labels remapped to 0..len-1)
        "download": False,         # fetch the official archives (checksummed) when files are missing
    },
    "model": {
        "arch": "resnet18",
        "arch_kwargs": {},         # e.g. {width: 32} or {depth: 28, widen_factor: 10}
        "num_classes": None,       # None = the dataset's
        "defense": None,
        "defense_kwargs": {},
        "activation": "relu",
        "normalize": None,         # [mean, std] inside the model, or None for raw [0, 1] input
        "init_from": None,         # run/checkpoint whose weights the model starts from (fine-tuning, CIFS-AT)
        "activation_from": None,   # run/checkpoint whose learned activations (Sparta) are copied in (transfer)
        "activation_freeze": True,  # freeze the copied activations (requires_grad=False)
        "activation_mapping": "stage",  # stage (ResNet-18 -> 34: extra blocks reuse a stage's last) | exact
    },
    "training": {
        "objective": "pgd_at",
        "epochs": 100,
        # activation_weight_decay: None = weight_decay; a number = that decay for learnable activations only
        "optimizer": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False,
                      "activation_weight_decay": None},
        "schedule": {"name": "multistep", "milestones": [75, 90], "gamma": 0.1, "warmup_epochs": 0},
        "attack": {"eps": "8/255", "alpha": "2/255", "steps": 10, "random_start": True, "model_mode": "eval"},
        "trades_beta": 6.0,
        "mart_beta": 6.0,
        "fgsm_alpha": None,        # FGSM-RS step; None = 1.25·eps (Wong et al. 2020)
        "amp": "none",             # none | bf16 | fp16 (GPU)
        "channels_last": False,
        "compile": False,
        "select_on_test": False,   # papers picked the best test-set checkpoint; not sound, off by default
        "select_metric": "auto",   # what `best` maximises: auto (pgd; clean for standard training) | pgd | clean
        "val_n": 500,              # validation images attacked each epoch
        "val_attack_steps": 10,
        "grad_clip": None,
    },
    "eval": {"n": 1000, "attacks": ["fgsm", "pgd20", "cw"], "eps": "8/255", "batch_size": 250},
}


def parse_number(value: Any) -> Any:
    """`"8/255"` → 0.0313...; other values unchanged."""
    if isinstance(value, str):
        m = _FRACTION.match(value)
        if m:
            den = float(m.group(2))
            if den == 0:
                raise ConfigError(f"division by zero in {value!r}")
            return float(m.group(1)) / den
    return value


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def list_presets() -> list[str]:
    folder = resources.files("robustact") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_preset(name: str) -> dict:
    path = resources.files("robustact") / "presets" / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(list_presets())
        raise ConfigError(f"unknown preset {name!r}; known: {known}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset {name!r} is not a mapping")
    return data


def load_preset(name: str, _seen: tuple[str, ...] = ()) -> dict:
    """A preset resolved against its `base:` chain and DEFAULTS."""
    if name in _seen:
        raise ConfigError(f"preset inheritance cycle: {' -> '.join((*_seen, name))}")
    data = _read_preset(name)
    base = data.pop("base", None)
    resolved = load_preset(base, (*_seen, name)) if base else copy.deepcopy(DEFAULTS)
    resolved = deep_merge(resolved, data)
    resolved["name"] = name
    return resolved


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return deep_merge(DEFAULTS, data)


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings (value parsed as YAML) to a copy of `config`."""
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = config
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"override {key!r}: {where!r} is not a config section")
            node = node[part]
        if parts[-1] not in node and not _open_section(parts):
            known = ", ".join(sorted(node))
            raise ConfigError(f"override {key!r}: unknown key {parts[-1]!r}; known here: {known}")
        node[parts[-1]] = value
    return config


def _open_section(parts: list[str]) -> bool:
    """Sections whose keys are free-form (passed through to a component)."""
    return len(parts) >= 2 and parts[-2] in ("defense_kwargs", "arch_kwargs", "optimizer", "schedule", "attack")


def get_float(section: dict, key: str) -> float | None:
    value = parse_number(section.get(key))
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number (e.g. 8/255), got {value!r}") from None


def dump_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)
