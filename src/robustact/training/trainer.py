"""The training loop: device-resident data, per-iteration LR, AMP/channels_last/compile switches,
per-epoch validation (clean + PGD) on a held-out split, atomic checkpoints every epoch, exact resume."""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from robustact.attacks import PGD
from robustact.config import dump_config, get_float, parse_number
from robustact.data import DeviceLoader
from robustact.defenses.base import aux_logits
from robustact.errors import ConfigError, RobustactError
from robustact.evaluation.engine import accuracy_under
from robustact.models import build_model
from robustact.models.activations import learnable_activations
from robustact.training.checkpoint import (
    init_weights_from,
    load_checkpoint_state,
    load_weights_into,
    restore_optimizer,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
)
from robustact.training.data_setup import num_classes_of, prepare_test_data, prepare_training_data
from robustact.training.objectives import ObjectiveContext, get_objective
from robustact.training.schedules import lr_at
from robustact.utils import atomic_write_text, get_device, seed_everything


def build_model_from_config(config: dict, num_classes: int) -> nn.Module:
    m = config["model"]
    normalize = m.get("normalize")
    return build_model(
        m["arch"],
        num_classes=m.get("num_classes") or num_classes,
        defense=m.get("defense"),
        activation=m.get("activation", "relu"),
        normalize=tuple(tuple(v) for v in normalize) if normalize else None,
        defense_kwargs=m.get("defense_kwargs") or None,
        **(m.get("arch_kwargs") or {}),
    )


def objective_context(training: dict) -> ObjectiveContext:
    atk = training.get("attack", {})
    eps = get_float(atk, "eps")
    steps = int(atk.get("steps", 10))
    alpha = get_float(atk, "alpha")
    return ObjectiveContext(
        eps=eps,
        alpha=alpha if alpha is not None else 2.5 * eps / steps,
        steps=steps,
        random_start=bool(atk.get("random_start", True)),
        attack_model_mode=atk.get("model_mode", "eval"),
        trades_beta=float(training.get("trades_beta", 6.0)),
        mart_beta=float(training.get("mart_beta", 6.0)),
        fgsm_alpha=get_float(training, "fgsm_alpha"),
    )


def autocast_context(amp: str, device: torch.device):
    if amp in (None, "none", False) or device.type != "cuda":
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if dtype is None:
        raise ConfigError(f"training.amp must be none, bf16 or fp16, got {amp!r}")
    return torch.autocast(device_type="cuda", dtype=dtype)


def parameter_groups(model: nn.Module, activation_weight_decay=None) -> list[dict]:
    """One group of every parameter, or — with `activation_weight_decay` set — the learnable activations'
    parameters (Sparta gates, PSSiLU) in a group of their own with that weight decay: with momentum 0.9 the
    default 5e-4 shrinks a Sparta centre tap by ~20% in a short one-cycle run and pins its spatial taps at 0."""
    if activation_weight_decay is None:
        return [{"params": list(model.parameters())}]
    act = {id(p) for _, m in learnable_activations(model) for p in m.parameters()}
    if not act:
        raise ConfigError("training.optimizer.activation_weight_decay is set but the model has no learnable "
                          "activation (model.activation: sparta*, pssilu)")
    return [{"params": [p for p in model.parameters() if id(p) not in act]},
            {"params": [p for p in model.parameters() if id(p) in act],
             "weight_decay": float(parse_number(activation_weight_decay))}]


class Trainer:
    """Trains one run directory. `Trainer(config, out).fit()`; `Trainer.resume(out).fit()` continues it."""

    def __init__(self, config: dict, out_dir: str | Path, data_root: str | None = None,
                 progress: bool = True, _resuming: bool = False) -> None:
        self.config = config
        self.out = Path(out_dir)
        self.data_root = data_root
        self.progress = progress
        self.ckpt_dir = self.out / "checkpoints"
        if not _resuming and (self.ckpt_dir / "last.json").exists():
            raise RobustactError(f"{self.out} already holds a run; continue it with --resume or choose a new --out")
        training = config["training"]
        self.epochs = int(training["epochs"])
        if self.epochs < 1:
            raise ConfigError(f"training.epochs must be >= 1, got {self.epochs}")
        self.device = get_device(config.get("device"))
        self.seed = int(config.get("seed", 0))
        seed_everything(self.seed)
        self.objective = get_objective(training["objective"])
        self.ctx = objective_context(training)

        # the model first: a bad arch or defense fails before any data is read
        num_classes = num_classes_of(config["data"])
        self.model = build_model_from_config(config, num_classes).to(self.device)
        if config["model"].get("init_from") and not (_resuming and (self.ckpt_dir / "last.json").exists()):
            self.init_from(config["model"]["init_from"], num_classes)
        if config["model"].get("activation_from"):  # frozen transfer of learned activations (Sparta)
            from robustact.defenses.transfer import transfer_activations

            transfer_activations(config["model"]["activation_from"], self.model,
                                 mapping=config["model"].get("activation_mapping") or "stage",
                                 freeze=bool(config["model"].get("activation_freeze", True)))
        self.data = prepare_training_data(config["data"], self.seed, data_root)
        self.channels_last = bool(training.get("channels_last"))
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        opt = training["optimizer"]
        self.base_lr = float(parse_number(opt.get("lr", 0.1)))
        self.optimizer = torch.optim.SGD(
            parameter_groups(self.model, opt.get("activation_weight_decay")), lr=self.base_lr,
            momentum=float(opt.get("momentum", 0.9)), weight_decay=float(parse_number(opt.get("weight_decay", 5e-4))),
            nesterov=bool(opt.get("nesterov", False)),
        )
        self.amp = training.get("amp", "none")
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" and self.device.type == "cuda" else None
        self.forward_model = torch.compile(self.model) if training.get("compile") else self.model
        self.loader = DeviceLoader(
            self.data.train_x, self.data.train_y, int(config["data"]["batch_size"]), self.device, train=True,
            augment=bool(config["data"].get("augment", True)), seed=self.seed,
            channels_last=self.channels_last,
        )
        self.start_epoch = 0
        self.best = {"metric": -math.inf, "epoch": None}

    # ---------------------------------------------------------------- resume
    def init_from(self, source: str, num_classes: int) -> None:
        """`model.init_from`: start from a run's best (else last) weights. The keys a defense or a learned
        activation adds to the plain network are optional, so a plain (e.g. clean-trained) run can seed a
        CAS/CIFS/EWAS/Sparta model; the plain network's keys must all fit."""
        m = self.config["model"]
        with torch.random.fork_rng(devices=[]):  # the plain network's key set, without consuming the RNG
            plain = set(build_model(m["arch"], num_classes=m.get("num_classes") or num_classes,
                                    **(m.get("arch_kwargs") or {})).state_dict())
        loaded, fresh = init_weights_from(self.model, source, optional=lambda key: key not in plain)
        print(f"init_from {source}: {loaded} tensors loaded, {fresh} of the defense/activation kept fresh")

    @classmethod
    def resume(cls, out_dir: str | Path, data_root: str | None = None, progress: bool = True) -> Trainer:
        import yaml

        out = Path(out_dir)
        cfg_path = out / "config.yaml"
        if not cfg_path.is_file():
            raise RobustactError(f"{out} is not a run directory (no config.yaml); nothing to resume")
        trainer = cls(yaml.safe_load(cfg_path.read_text()), out, data_root, progress, _resuming=True)
        if (trainer.ckpt_dir / "last.json").exists():
            info, tensors, state = load_checkpoint_state(trainer.ckpt_dir, "last")
            load_weights_into(trainer.model, tensors, f"{trainer.ckpt_dir}/last.safetensors")
            restore_optimizer(trainer.optimizer, info, state)
            set_rng_state(state)
            trainer.start_epoch = int(info["epoch"])
            trainer.best = info.get("best", trainer.best)
        trainer.drop_metrics_after(trainer.start_epoch)
        return trainer

    def drop_metrics_after(self, epoch: int) -> None:
        """Forget metric lines of epochs past the checkpoint (written before an interruption hit)."""
        path = self.out / "metrics.jsonl"
        if path.is_file():
            keep = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("epoch", 0) <= epoch]
            atomic_write_text(path, "".join(line + "\n" for line in keep))

    # ---------------------------------------------------------------- loop
    def fit(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "config.yaml", dump_config(self.config))
        if self.start_epoch >= self.epochs:
            print(f"run {self.out} already finished ({self.epochs} epochs)")
            return self.out
        for epoch in range(self.start_epoch, self.epochs):
            record = self.train_epoch(epoch)
            record |= self.validate()
            self.end_epoch(epoch, record)
        return self.out

    def train_epoch(self, epoch: int) -> dict:
        model, loader = self.model, self.loader
        loader.set_epoch(epoch)
        n_batches = len(loader)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        # Label-mask defenses (CAS, EWAS, CIFS) train with the label's mask, so train_acc sees the label; the aux
        # heads' accuracy is what decides the mask at test time, and is recorded as train_aux_acc.
        aux_correct = torch.zeros((), device=self.device)
        has_aux = False
        seen = 0
        start = time.perf_counter()
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{self.epochs}", disable=not self.progress,
                   leave=False, dynamic_ncols=True)
        for i, (x, y) in enumerate(loader):
            lr = lr_at(self.config["training"]["schedule"], self.base_lr, epoch + i / n_batches, self.epochs)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            model.train()
            with autocast_context(self.amp, self.device):
                loss, logits = self.objective(self.forward_model, x, y, self.ctx)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                clip = self.config["training"].get("grad_clip")
                if clip:
                    nn.utils.clip_grad_norm_(model.parameters(), float(clip))
                self.optimizer.step()
            loss_sum += loss.detach() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            heads = aux_logits(model)
            if heads:
                has_aux = True
                aux_correct += torch.stack([(h.detach().argmax(1) == y).sum() for h in heads]).float().mean()
            seen += y.shape[0]
            if self.progress and (i % 10 == 9 or i == n_batches - 1):  # one host sync every 10 steps
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                                img_s=f"{seen / elapsed:.0f}", lr=f"{lr:.4f}")
            bar.update(1)
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if not math.isfinite(loss_sum.item()):
            raise RobustactError(f"training diverged in epoch {epoch + 1} (loss is {loss_sum.item()}); lower the lr")
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum.item() / max(seen, 1),
                  "train_acc": correct.item() / max(seen, 1)}
        if has_aux:
            record["train_aux_acc"] = aux_correct.item() / max(seen, 1)
        return record | {"epoch_seconds": elapsed, "train_images_per_s": seen / elapsed}

    def validate(self) -> dict:
        """Clean and PGD accuracy on the held-out split (model selection happens here, never on test)."""
        n = min(int(self.config["training"].get("val_n", 500)), len(self.data.val_y))
        out = {}
        if n > 0:
            out |= self._robust_accuracy(self.data.val_x[:n], self.data.val_y[:n], "val")
        if self.config["training"].get("select_on_test"):
            x, y = prepare_test_data(self.config["data"], n or 500, self.data_root)
            out |= self._robust_accuracy(x, y, "test")
        return out

    def _robust_accuracy(self, x_u8: torch.Tensor, y: torch.Tensor, prefix: str) -> dict:
        steps = int(self.config["training"].get("val_attack_steps", 10))
        attack = PGD(self.ctx.eps, steps=steps, alpha=2.5 * self.ctx.eps / steps, random_start=True, seed=self.seed)
        x = x_u8.to(self.device).float().div_(255)
        clean, robust = accuracy_under(self.model, x, y.to(self.device), attack, batch_size=500)
        return {f"{prefix}_clean_acc": clean, f"{prefix}_pgd{steps}_acc": robust}

    def select_metric(self) -> str:
        """What `best` maximises: PGD accuracy for adversarial objectives, clean accuracy for standard training
        (whose PGD accuracy is ~0 and would pick an untrained early epoch)."""
        choice = self.config["training"].get("select_metric", "auto")
        if choice == "auto":
            return "clean" if self.config["training"]["objective"] == "standard" else "pgd"
        if choice not in ("clean", "pgd"):
            raise ConfigError(f"training.select_metric must be auto, clean or pgd, got {choice!r}")
        return choice

    def end_epoch(self, epoch: int, record: dict) -> None:
        select_key = "test" if self.config["training"].get("select_on_test") else "val"
        kind = self.select_metric()
        metric = next((v for k, v in record.items() if k.startswith(f"{select_key}_{kind}")), None)
        if metric is not None and metric > self.best["metric"]:
            self.best = {"metric": metric, "epoch": epoch + 1, "selected_on": select_key, "criterion": kind}
            save_weights(self.model, self.ckpt_dir / "best.safetensors", {"epoch": str(epoch + 1)})
            atomic_write_text(self.ckpt_dir / "best.json", json.dumps(self.best | {"epoch": epoch + 1}))
        record["best_epoch"] = self.best["epoch"]
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        info = {"epoch": epoch + 1, "best": self.best, "arch": self.config["model"]["arch"],
                "build_kwargs": getattr(self.model, "build_kwargs", {})}
        save_checkpoint(self.ckpt_dir, "last", self.model, self.optimizer, info, rng_state())
        summary = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                            if k not in ("lr",))
        print(summary, flush=True)
