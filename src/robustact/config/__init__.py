"""Run configuration: typed dataclasses (`schema.py`) and their YAML sources (`presets.py`).

    config = resolve(apply_overrides(load_preset("pgd-at-resnet18-cifar10"), ["training.epochs=30"]))
    config.training.attack.eps   # 0.0313..., parsed from "8/255" once
"""

from robustact.config.presets import (
    DEFAULTS,
    apply_overrides,
    deep_merge,
    dump_config,
    list_presets,
    load_config_file,
    load_preset,
    load_run_config,
    resolve,
)
from robustact.config.schema import (
    AttackConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimizerConfig,
    RunConfig,
    ScheduleConfig,
    TrainingConfig,
)
from robustact.fields import parse_number

__all__ = [
    "DEFAULTS", "AttackConfig", "DataConfig", "EvalConfig", "ModelConfig", "OptimizerConfig", "RunConfig",
    "ScheduleConfig", "TrainingConfig", "apply_overrides", "deep_merge", "dump_config", "list_presets",
    "load_config_file", "load_preset", "load_run_config", "parse_number", "resolve",
]
