"""Presets and config files: YAML data with `base:` inheritance, `--set a.b=value` overrides, stored run configs.

A preset is `src/robustact/presets/NAME.yaml`; its `base:` names another preset. A `--config` file may name a
preset or another file (relative to itself) as its `base:`. Everything merges onto the defaults of
`RunConfig` and is then parsed once into the typed `RunConfig` (`resolve`), which rejects unknown keys.
Preset names read defense-objective-arch-dataset[-variant] (`cas-pgd-at-resnet18-cifar10`); a plain baseline
has no defense part, `small` is the CPU-sized `resnet_small`.
"""

from __future__ import annotations

import copy
import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from robustact.config.schema import RunConfig
from robustact.errors import ConfigError

DEFAULTS: dict[str, Any] = RunConfig().to_dict()


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _yaml_mapping(text: str, what: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} is not valid YAML: {' '.join(str(exc).split())[:160]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a mapping of sections (data:, model:, training:, ...), "
                          f"got {type(data).__name__}")
    return data


def list_presets() -> list[str]:
    folder = resources.files("robustact") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_preset(name: str) -> dict:
    path = resources.files("robustact") / "presets" / f"{name}.yaml"
    if not isinstance(name, str) or not path.is_file():
        close = difflib.get_close_matches(str(name), list_presets(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; known: {', '.join(list_presets())}")
    return _yaml_mapping(path.read_text(), f"preset {name!r}")


def _resolve_base(data: dict, seen: tuple[str, ...], here: Path | None) -> dict:
    """`data` merged onto its `base:` (a preset name, or a YAML file relative to `here`) and DEFAULTS."""
    base = data.pop("base", None)
    if base is None:
        return deep_merge(DEFAULTS, data)
    if not isinstance(base, str):
        raise ConfigError(f"base: must be a preset name or a file path, got {base!r}")
    if base in seen:
        raise ConfigError(f"config inheritance cycle: {' -> '.join((*seen, base))}")
    if here is not None and (base.endswith((".yaml", ".yml")) or (here / base).is_file()):
        return deep_merge(_load_file(here / base, (*seen, base)), data)
    return deep_merge(_load_preset(base, (*seen, base)), data)


def _load_preset(name: str, seen: tuple[str, ...]) -> dict:
    return _resolve_base(_read_preset(name), seen, None)


def load_preset(name: str) -> dict:
    """A preset resolved against its `base:` chain and DEFAULTS (a plain mapping; `resolve` types it)."""
    resolved = _load_preset(name, (name,))
    resolved["name"] = name
    return resolved


def _load_file(path: Path, seen: tuple[str, ...]) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    return _resolve_base(_yaml_mapping(text, f"config file {path}"), seen, path.parent)


def load_config_file(path: str | Path) -> dict:
    """A `--config` file resolved against its `base:` (a preset or another file) and DEFAULTS."""
    return _load_file(Path(path), (str(path),))


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings (value parsed as YAML) to a copy of `config`; unknown keys are errors."""
    config = copy.deepcopy(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value")
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
        free = len(parts) >= 2 and parts[-2] in ("arch_kwargs", "defense_kwargs")
        if parts[-1] not in node and not free:
            raise ConfigError(f"override {key!r}: unknown key {parts[-1]!r}; known here: {', '.join(node)}")
        node[parts[-1]] = value
    return config


def resolve(config: dict | RunConfig) -> RunConfig:
    """The typed, checked configuration of a merged mapping (a `RunConfig` passes through)."""
    return config if isinstance(config, RunConfig) else RunConfig.from_mapping(config)


def upgrade_stored(raw: dict) -> dict:
    """A run's stored config from an earlier release, in today's keys: CIFS's defense option `init_from` is
    the trainer's `model.init_from` now."""
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("defense_kwargs"), dict) \
            and "init_from" in model["defense_kwargs"]:
        model = raw["model"] = dict(model)
        model["defense_kwargs"] = dict(model["defense_kwargs"])
        init_from = model["defense_kwargs"].pop("init_from")
        model.setdefault("init_from", init_from)
    return raw


def load_run_config(path: str | Path) -> RunConfig:
    """The resolved config a run directory stores (`config.yaml`), typed; a broken file is one ConfigError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the run config {path}: {exc.strerror or exc}") from None
    raw = upgrade_stored(_yaml_mapping(text, f"run config {path}"))
    try:
        return RunConfig.from_mapping(deep_merge(DEFAULTS, raw))
    except ConfigError as exc:
        raise ConfigError(f"run config {path}: {exc}") from None


def dump_config(config: RunConfig | dict) -> str:
    data = config.to_dict() if isinstance(config, RunConfig) else config
    return yaml.safe_dump(data, sort_keys=False)
