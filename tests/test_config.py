"""The typed run configuration: defaults stated once, every value checked once with a line that names the key,
unknown keys rejected at every level, `--config` files with `base:`, and stored run configs of 0.1.0."""

from __future__ import annotations

import pytest
import yaml
from conftest import requires_cifar

from robustact.cli import main
from robustact.config import (
    DEFAULTS,
    RunConfig,
    apply_overrides,
    dump_config,
    load_config_file,
    load_preset,
    load_run_config,
    resolve,
)
from robustact.errors import ConfigError


def demo_with(*overrides: str) -> RunConfig:
    return resolve(apply_overrides(load_preset("demo"), list(overrides)))


def test_defaults_are_the_dataclasses_and_round_trip():
    config = RunConfig()
    assert DEFAULTS == config.to_dict()
    assert config.training.attack.eps == pytest.approx(8 / 255) and config.eval.n == 1000
    again = resolve(yaml.safe_load(dump_config(config)))
    assert again == config


def test_values_are_parsed_once():
    c = demo_with("training.attack.eps=4/255", "training.optimizer.weight_decay=2e-4", "model.arch_kwargs={width: 8}",
                  "training.epochs=3.0")
    assert c.training.attack.eps == pytest.approx(4 / 255)
    assert c.training.optimizer.weight_decay == pytest.approx(2e-4)  # YAML reads 2e-4 as a string
    assert c.model.arch_kwargs == {"width": 8} and c.training.epochs == 3 and isinstance(c.training.epochs, int)
    assert c.training.selection == "pgd" and demo_with("training.objective=standard").training.selection == "clean"


@pytest.mark.parametrize("section, key", [
    ("", "seedz"), ("data", "datset"), ("model", "archh"), ("training", "epochz"), ("training.attack", "stepz"),
    ("training.optimizer", "momentumm"), ("training.schedule", "milestone"), ("eval", "nn"),
])
def test_unknown_keys_are_rejected_at_every_level(section, key):
    raw = load_preset("demo")
    node = raw
    for part in filter(None, section.split(".")):
        node = node[part]
    node[key] = 1
    where = f"{section}.{key}" if section else key
    with pytest.raises(ConfigError, match=rf"^{where.replace('.', '[.]')}: unknown key; known here: "):
        resolve(raw)


@pytest.mark.parametrize("override, fragments", [
    ("training.epochs=abc", ["training.epochs", "integer", "'abc'"]),
    ("training.epochs=2.7", ["training.epochs", "integer", "2.7"]),
    ("training.epochs=0", ["training.epochs", ">= 1"]),
    ("training.attack.eps=8", ["training.attack.eps", "8/255"]),
    ("training.attack.steps=0", ["training.attack.steps", ">= 1"]),
    ("training.optimizer.lr=-1", ["training.optimizer.lr", "> 0"]),
    ("training.schedule.name=linear", ["training.schedule.name", "multistep"]),
    ("data.augment=maybe", ["data.augment", "true or false"]),
    ("data.dataset=mnist", ["data.dataset", "unknown dataset"]),
    ("data.classes=[3, 3]", ["data.classes", "distinct"]),
    ("model.arch=resnet1000", ["model.arch", "unknown arch"]),
    ("model.arch_kwargs={widht: 8}", ["does not take widht", "width"]),
    ("model.arch_kwargs={width: eight}", ["model.arch_kwargs.width", "integer"]),
    ("model.defense=cas", None),
    ("model.defense_kwargs={betta: 2}", ["defense_kwargs", "without a defense"]),
    ("model.activation=mish", ["model.activation", "unknown activation"]),
    ("model.activation={name: sparta, beta: 2}", ["model.activation", "does not take beta"]),
    ("training=fast", ["training", "mapping"]),
    ("training.attack=pgd", ["training.attack", "mapping"]),
    ("eval.attacks=pgd20", ["eval.attacks", "list"]),
])
def test_bad_values_are_one_line_naming_the_key(override, fragments):
    if fragments is None:
        assert demo_with(override).model.defense == "cas"
        return
    with pytest.raises(ConfigError) as info:
        demo_with(override)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_defense_options_are_typed_and_checked():
    c = demo_with("model.defense=cas", "model.defense_kwargs={beta: '3/2'}")
    assert c.model.defense_kwargs == {"beta": 1.5}
    with pytest.raises(ConfigError, match="defense 'cas' does not take betta; it takes: input_size, beta"):
        demo_with("model.defense=cas", "model.defense_kwargs={betta: 2}")
    with pytest.raises(ConfigError, match="model.defense_kwargs.beta: must be >= 0"):
        demo_with("model.defense=cas", "model.defense_kwargs={beta: -1}")
    with pytest.raises(ConfigError, match="model.defense_kwargs.probes: CIFS probes"):
        demo_with("model.defense=cifs", "model.defense_kwargs={probes: [deep]}")


def test_config_file_resolves_base_like_presets(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: demo\ntraining: {epochs: 2, attack: {steps: 3}}\n")
    (tmp_path / "child.yaml").write_text("base: mine.yaml\nmodel: {arch_kwargs: {width: 8}}\n")
    config = resolve(load_config_file(tmp_path / "child.yaml"))
    demo = resolve(load_preset("demo"))
    assert (config.training.epochs, config.training.attack.steps, config.model.arch_kwargs) == (2, 3, {"width": 8})
    assert config.model.arch == demo.model.arch and config.data == demo.data  # the rest from the base
    assert config.training.attack.eps == demo.training.attack.eps
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config_file(tmp_path / "loop.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config_file(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("training: {epochs: 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(tmp_path / "broken.yaml")


def test_unknown_preset_suggests_the_renamed_one():
    with pytest.raises(ConfigError, match="did you mean pgd-at-small-cifar10"):
        load_preset("pgd-at-small")


def test_stored_run_config_of_an_earlier_release_still_loads(tmp_path):
    """0.1.0 stored `eps: 8/255` strings and CIFS's `init_from` among the defense options."""
    old = {"name": "cifs-pgd-at-small", "seed": 0, "device": "auto",
           "data": {"dataset": "cifar10", "train_subset": 10000, "val_size": 500, "batch_size": 128, "augment": True,
                    "classes": None, "download": False},
           "model": {"arch": "resnet_small", "arch_kwargs": {}, "num_classes": None, "defense": "cifs",
                     "defense_kwargs": {"beta": 2.0, "init_from": "runs/clean"}, "activation": "sparta_b1",
                     "normalize": None, "activation_freeze": True, "activation_mapping": "stage"},
           "training": {"attack": {"eps": "8/255", "alpha": "2.5/255", "steps": 5, "random_start": True,
                                   "model_mode": "eval"}, "schedule": {"name": "cyclic", "warmup_fraction": 0.4},
                        "optimizer": {"lr": 0.2, "activation_weight_decay": None}},
           "eval": {"n": 1000, "attacks": ["fgsm", "pgd20", "cw"], "eps": "8/255", "batch_size": 250}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    config = load_run_config(tmp_path / "config.yaml")
    assert config.model.init_from == "runs/clean" and "init_from" not in config.model.defense_kwargs
    assert config.training.attack.alpha == pytest.approx(2.5 / 255)
    assert config.model.activation == {"name": "sparta", "beta0": 1.0}
    (tmp_path / "config.yaml").write_text("training: [1, 2\n")
    with pytest.raises(ConfigError, match="run config .* is not valid YAML"):
        load_run_config(tmp_path / "config.yaml")


@pytest.mark.parametrize("body, fragments", [
    ("training: {epochz: 3}\n", ["training.epochz", "unknown key"]),
    ("training: {attack: {stepz: 20}}\n", ["training.attack.stepz", "unknown key"]),
    ("training: {optimizer: {lrr: 0.1}}\n", ["training.optimizer.lrr", "unknown key"]),
    ("training: {epochs: many}\n", ["training.epochs", "integer"]),
    ("training: fast\n", ["training", "mapping"]),
    ("[1, 2]\n", ["must be a mapping"]),
    ("base: no-such-preset\n", ["unknown preset"]),
])
def test_cli_config_errors_are_one_line_and_exit_2(tmp_path, capsys, body, fragments):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and all(f in err[0] for f in fragments), err
    assert not (tmp_path / "run").exists()  # nothing on disk before the config is valid


@requires_cifar
def test_a_config_file_with_base_trains_what_base_and_overrides_say(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("base: demo\ndata: {train_subset: 96, val_size: 32, batch_size: 32}\n"
                    "model: {arch_kwargs: {width: 4}}\ntraining: {epochs: 1, val_n: 16, val_attack_steps: 1}\n")
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--no-progress",
                 "--set", "training.attack.steps=1"]) == 0
    stored = load_run_config(tmp_path / "run" / "config.yaml")
    demo = resolve(load_preset("demo"))
    assert stored.training.epochs == 1 and stored.training.attack.steps == 1
    assert stored.model.arch_kwargs == {"width": 4} and stored.data.train_subset == 96
    assert stored.model.arch == demo.model.arch and stored.training.schedule == demo.training.schedule
    assert stored.training.optimizer == demo.training.optimizer
