"""The run configuration as typed dataclasses: every default stated once (units in comments), every value parsed
and checked once (`robustact.fields`), unknown keys rejected at every level. `RunConfig.from_mapping` builds it
from the merged YAML of a preset, a `--config` file and `--set` overrides; `to_dict` is what a run stores.

Cross-field checks that need the registries (an architecture's options, a defense's options, an activation's
options, the dataset's classes) run in `validate`, before anything is read from disk or written to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from robustact.data.datasets import dataset_info
from robustact.data.splits import num_classes_of
from robustact.defenses.build import is_no_defense
from robustact.defenses.placement import parse_defense_options
from robustact.errors import ConfigError, RobustactError
from robustact.fields import option, parse_options, parse_value, to_plain
from robustact.models.activations import canonical_activation
from robustact.models.normalization import NONE, parse_normalize
from robustact.models.registry import arch_family, check_arch_kwargs

OBJECTIVES = ("standard", "pgd_at", "trades", "mart", "fgsm_rs")
SCHEDULES = ("multistep", "cosine", "cyclic", "constant")
MODEL_MODES = ("eval", "train", "keep")
STARTS = ("uniform", "normal")
AMP_MODES = ("none", "bf16", "fp16")


def _eps(value: Any, where: str) -> float:
    """An L-inf radius in pixel units: 8/255, not 8."""
    eps = parse_value(value, float, where)
    if not 0 <= eps <= 1:
        hint = f"; give it in pixel units, e.g. {eps:g}/255" if eps > 1 else ""
        raise ConfigError(f"{where}: must be in [0, 1] (pixel units){hint}, got {eps:g}")
    return eps


def _activation(value: Any, where: str) -> str | dict:
    return at_key(where, canonical_activation, value)


def _normalize(value: Any, where: str) -> list[list[float]] | str | None:
    """None (the architecture's own), "none" (raw [0, 1] input, explicitly), or [[means], [stds]]."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in NONE:
        return "none"
    return parse_normalize(value, where=where)


def at_key(where: str, check, *args: Any) -> Any:
    """`check(*args)`, with any one-line error it raises prefixed by the config key it concerns."""
    try:
        return check(*args)
    except RobustactError as exc:
        raise ConfigError(f"{where}: {exc}") from None


@dataclass
class DataConfig:
    dataset: str = "cifar10"                        # cifar10 | cifar100 | svhn
    train_subset: int | None = option(None, min=1)  # images: a stratified subset of the training split (None: all)
    val_size: int = option(1000, min=0)             # images held out from train for validation / model selection
    batch_size: int = option(128, min=1)            # images per training step
    augment: bool = True                            # pad-4 random crop + horizontal flip, on the device
    classes: list[int] | None = None                # train/test on these classes only (labels remapped to 0..len-1)
    download: bool = False                          # fetch the official archives (checksummed) when files are missing

    def validate(self, where: str) -> None:
        info = at_key(f"{where}.dataset", dataset_info, self.dataset)
        if self.classes is not None:
            bad = [c for c in self.classes if not 0 <= c < info.num_classes]
            if bad or len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
                raise ConfigError(f"{where}.classes: need at least 2 distinct classes of 0..{info.num_classes - 1}, "
                                  f"got {self.classes}")


@dataclass
class ModelConfig:
    arch: str = "resnet18"
    arch_kwargs: dict = field(default_factory=dict)   # the architecture's options, e.g. {width: 32}, {depth: 28}
    num_classes: int | None = option(None, min=2)     # None: the data's (after class selection)
    defense: str | None = None                        # none | cas | cifs | ewas
    defense_kwargs: dict = field(default_factory=dict)  # the defense's options (docs/<defense>.md)
    activation: Any = option("relu", parse=_activation)  # a name, or {name: sparta, kernel_size: 5, beta0: 1}
    normalize: Any = option(None, parse=_normalize)  # cifar10 | ... | none | [mean, std]; None: the arch default
    init_from: str | None = None          # run/checkpoint whose weights the model starts from (fine-tuning, CIFS-AT)
    activation_from: str | None = None    # run/checkpoint whose learned activations (Sparta) are copied in
    activation_freeze: bool = True        # freeze the copied activations (requires_grad=False)
    activation_mapping: str = option("stage", choices=("stage", "exact"))  # stage: ResNet-18 -> 34; exact

    def validate(self, where: str) -> None:
        at_key(f"{where}.arch", arch_family, self.arch)
        self.arch_kwargs = check_arch_kwargs(self.arch, self.arch_kwargs, f"{where}.arch_kwargs")
        if is_no_defense(self.defense):
            self.defense = None
            if self.defense_kwargs:
                raise ConfigError(f"{where}.defense_kwargs: given without a defense (set {where}.defense)")
        else:
            options = parse_defense_options(self.defense, self.defense_kwargs, f"{where}.defense_kwargs")
            self.defense = self.defense.lower()
            self.defense_kwargs = {k: v for k, v in to_plain(options).items() if k in self.defense_kwargs}


@dataclass
class OptimizerConfig:
    """SGD."""

    lr: float = option(0.1, above=0)                # peak learning rate
    momentum: float = option(0.9, min=0, max=1)
    weight_decay: float = option(5e-4, min=0)
    nesterov: bool = False
    activation_weight_decay: float | None = option(None, min=0)  # None: weight_decay; else for learnable activations


@dataclass
class ScheduleConfig:
    name: str = option("multistep", choices=SCHEDULES)
    milestones: list[float] = field(default_factory=lambda: [75, 90])  # epochs (multistep)
    gamma: float = option(0.1, above=0)             # multistep factor at each milestone
    warmup_epochs: float = option(0.0, min=0)       # linear warm-up (multistep, cosine)
    warmup_fraction: float = option(0.5, above=0, max=1)  # cyclic: where the one cycle peaks, as a share of training
    epoch_base: int = option(0, choices=(0, 1))     # multistep: the number of the first epoch the milestones count
    #   from; 1 = the official CAS TRADES/MART scripts (`for epoch in range(1, epochs + 1)`: every drop one epoch
    #   earlier than with 0, the robustact default)

    def validate(self, where: str) -> None:
        if self.epoch_base != 0 and self.name != "multistep":
            raise ConfigError(f"{where}.epoch_base: counts the multistep milestones; the {self.name} schedule has "
                              "none (leave it at 0)")


@dataclass
class AttackConfig:
    """The training attack (PGD-k; FGSM-RS takes eps and random start from here)."""

    eps: float = option(8 / 255, parse=_eps)              # L-inf radius, pixel units
    alpha: float | None = option(2 / 255, min=0)          # step size, pixel units (None: 2.5·eps/steps)
    steps: int = option(10, min=1)
    random_start: bool = True                             # start at a random point (else at x)
    start: str = option("uniform", choices=STARTS)        # the PGD training attack's start (pgd_at, mart): uniform
    #   in the eps-ball, or x + start_sigma·N(0, 1) (normal: the official MART code's); TRADES' KL adversary always
    #   starts normal, FGSM-RS always uniform
    start_sigma: float = option(0.001, min=0)             # pixel units: the normal start's std (TRADES' too)
    clamp_start: bool = True                              # clamp the random start to [0, 1]; false: the official
    #   CAS / TRADES / MART code (only the eps-ball; the first forward sees the unclamped start)
    model_mode: str = option("eval", choices=MODEL_MODES)  # the model's mode while the attack runs


@dataclass
class TrainingConfig:
    objective: str = option("pgd_at", choices=OBJECTIVES)
    epochs: int = option(100, min=1)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    trades_beta: float = option(6.0, min=0)
    mart_beta: float = option(6.0, min=0)
    fgsm_alpha: float | None = option(None, min=0)   # FGSM-RS step, pixel units (None: 1.25·eps, Wong et al. 2020)
    amp: str = option("none", choices=AMP_MODES)     # autocast dtype: bf16 (GPU or CPU), fp16 (GPU, scaled)
    channels_last: bool = False
    compile: bool = False                            # torch.compile the model
    tf32: bool = True                                # TF32 matmuls and convolutions on CUDA (Ampere and newer)
    sync_bn: bool = False                            # batch norm over the global batch in a multi-process job
    select_on_test: bool = False   # the papers picked the best test-set checkpoint; not sound, off by default
    select_metric: str = option("auto", choices=("auto", "pgd", "clean"))  # auto: pgd (clean for standard training)
    val_n: int = option(500, min=0)                  # validation images attacked after each epoch
    val_attack_steps: int = option(10, min=1)        # PGD steps of that validation attack
    grad_clip: float | None = option(None, above=0)  # max gradient norm

    @property
    def selection(self) -> str:
        """What `best` maximises: PGD accuracy, or clean accuracy for standard training (whose PGD accuracy is
        ~0 and would pick an untrained early epoch)."""
        if self.select_metric == "auto":
            return "clean" if self.objective == "standard" else "pgd"
        return self.select_metric


@dataclass
class EvalConfig:
    n: int = option(1000, min=1)                     # the first n test images
    attacks: list[str] = field(default_factory=lambda: ["fgsm", "pgd20", "cw"])
    eps: float = option(8 / 255, parse=_eps)          # L-inf radius, pixel units
    batch_size: int = option(250, min=1)             # images per attack call


@dataclass
class RunConfig:
    name: str = "custom"
    description: str = ""
    seed: int = option(0, min=0)
    device: str = "auto"                             # auto | cpu | cuda | cuda:1 | mps
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @classmethod
    def from_mapping(cls, data: Any) -> RunConfig:
        return parse_options(cls, data)

    def to_dict(self) -> dict:
        return to_plain(self)

    @property
    def num_classes(self) -> int:
        """The model's classes: `model.num_classes`, else the data's after class selection."""
        return self.model.num_classes or num_classes_of(self.data.dataset, self.data.classes)

    def validate(self, where: str) -> None:
        if self.model.num_classes and self.data.classes and self.model.num_classes != len(self.data.classes):
            raise ConfigError(f"model.num_classes={self.model.num_classes} but data.classes selects "
                              f"{len(self.data.classes)} classes")
