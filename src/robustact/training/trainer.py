"""The training loop: device-resident data, per-iteration LR, AMP/channels_last/compile switches,
per-epoch validation (clean + PGD) on a held-out split, atomic checkpoints every epoch, exact resume.

The trainer reads a typed `RunConfig` (`robustact.config`); everything in it is checked before the first file
is read or written.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from robustact import distributed
from robustact.attacks import PGD, accuracy_under
from robustact.checkpoints import init_weights_from, load_source_model, load_weights_into
from robustact.checkpoints.state import (
    has_checkpoint,
    load_checkpoint_state,
    recover,
    restore_optimizer,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from robustact.config import RunConfig, dump_config, load_run_config, resolve
from robustact.data import DeviceLoader, test_split, training_split
from robustact.defenses import aux_logits, build_model, sites
from robustact.errors import ConfigError, RobustactError
from robustact.fileio import WriterLock, append_line, atomic_write_text, make_dirs
from robustact.models import create_model, learnable_activations, transfer_activations
from robustact.training.objectives import ObjectiveContext, get_objective
from robustact.training.schedules import lr_at
from robustact.utils import autocast_context, check_amp, get_device, seed_everything, show_progress


def build_model_from_config(config: RunConfig) -> nn.Module:
    m = config.model
    return build_model(m.arch, num_classes=config.num_classes, defense=m.defense, activation=m.activation,
                       normalize="default" if m.normalize is None else m.normalize,
                       defense_kwargs=m.defense_kwargs or None, **m.arch_kwargs)


def check_compile(model: nn.Module, compile_model: bool) -> nn.Module:
    """`torch.compile(model)` when asked, or the model; a model with a defense site torch.compile cannot compile
    (CIFS: its mask differentiates through the network inside the forward, a double backward) is refused in one
    line before anything runs."""
    if not compile_model:
        return model
    blocked = sorted({type(s).__name__ for s in sites(model) if not s.compilable})
    if blocked:
        raise ConfigError(f"training.compile: torch.compile cannot compile {', '.join(blocked)} (its forward takes "
                          "a gradient through the network with create_graph, a double backward that compiled "
                          "graphs do not support); set training.compile=false")
    return torch.compile(model)


def parameter_groups(model: nn.Module, activation_weight_decay: float | None = None) -> list[dict]:
    """One group of every parameter, or — with `activation_weight_decay` set — the learnable activations'
    parameters (Sparta gates, PSSiLU) in a group of their own with that weight decay: with momentum 0.9 the
    default 5e-4 shrinks a Sparta centre tap by ~20% in a short one-cycle run and pins its spatial taps at 0."""
    if activation_weight_decay is None:
        return [{"params": list(model.parameters())}]
    act = {id(p) for _, m in learnable_activations(model) for p in m.parameters()}
    if not act:
        raise ConfigError("training.optimizer.activation_weight_decay is set but the model has no learnable "
                          "activation (model.activation: sparta, pssilu)")
    return [{"params": [p for p in model.parameters() if id(p) not in act]},
            {"params": [p for p in model.parameters() if id(p) in act], "weight_decay": float(activation_weight_decay)}]


class Trainer:
    """Trains one run directory. `Trainer(config, out).fit()`; `Trainer.resume(out).fit()` continues it."""

    def __init__(self, config: RunConfig | dict, out_dir: str | Path, data_root: str | None = None,
                 progress: bool = True, _resuming: bool = False) -> None:
        self.config = config = resolve(config)
        self.out = Path(out_dir)
        self.data_root = data_root
        self.job, device = distributed.setup(config.device)  # one process, or this one's place in a torchrun job
        self.progress = show_progress(progress) and self.job.main  # bars (and their host syncs) on a terminal
        self.ckpt_dir = self.out / "checkpoints"
        self.resuming = _resuming
        self._lock: WriterLock | None = None
        self._writer_checked = False
        self._refuse_to_overwrite()
        training = config.training
        if config.data.batch_size % self.job.world:
            raise ConfigError(f"data.batch_size={config.data.batch_size} is the global batch and must split evenly "
                              f"over the {self.job.world} processes; make it a multiple of {self.job.world}")
        self.epochs = training.epochs
        self.device = get_device(device)
        self.amp = check_amp(training.amp, self.device)
        self.seed = config.seed
        seed_everything(self.seed)
        self.objective = get_objective(training.objective)
        self._build_model(_resuming)  # the model first: a bad arch or defense fails before any data is read
        self._build_data()
        opt = training.optimizer
        self.base_lr = opt.lr
        self.optimizer = torch.optim.SGD(parameter_groups(self.model, opt.activation_weight_decay), lr=opt.lr,
                                         momentum=opt.momentum, weight_decay=opt.weight_decay, nesterov=opt.nesterov)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        self.start_epoch = 0
        self.best = {"metric": -math.inf, "epoch": None}

    def _build_model(self, resuming: bool) -> None:
        """The network (starting points, frozen activations), its memory format, sync BN, and the modules the
        objective runs: `forward_model` (compiled, inside DistributedDataParallel in a job) for the training
        forward, `ctx.attack_model` for the attacks."""
        config, training = self.config, self.config.training
        self.model = build_model_from_config(config).to(self.device)
        if config.model.init_from and not (resuming and has_checkpoint(self.ckpt_dir, "last")):
            self.init_from(config.model.init_from)
        if config.model.activation_from:  # frozen transfer of learned activations (Sparta)
            self.transfer_activations_from(config.model.activation_from)
        self.channels_last = training.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        cuda = self.device.type == "cuda"
        if cuda:  # fixed input shapes: let cuDNN pick its fastest kernels; TF32 where asked for
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = training.tf32
        if training.sync_bn and self.job.distributed:
            self.model = distributed.convert_sync_batchnorm(self.model, cuda)
        attack_model = check_compile(self.model, training.compile)
        self.forward_model = attack_model
        if self.job.distributed:
            ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None)
            self.forward_model = torch.compile(ddp) if training.compile else ddp
        self.ctx = ObjectiveContext.from_config(
            training, **({"shard": (self.job.rank, self.job.world), "attack_model": attack_model}
                         if self.job.distributed else {}))

    def _build_data(self) -> None:
        d = self.config.data
        self.data = training_split(d.dataset, self.seed, classes=d.classes, train_subset=d.train_subset,
                                   val_size=d.val_size, root=self.data_root, download=d.download)
        self.loader = DeviceLoader(self.data.train_x, self.data.train_y, d.batch_size, self.device, train=True,
                                   augment=d.augment, seed=self.seed, channels_last=self.channels_last,
                                   rank=self.job.rank, world=self.job.world)
        if len(self.loader) == 0:
            raise ConfigError(f"data.batch_size={d.batch_size} is larger than the training split "
                              f"({len(self.data.train_y)} images after class selection, subset and the "
                              f"{len(self.data.val_y)} held out for validation); lower data.batch_size or val_size")

    # ---------------------------------------------------------------- starting points
    def init_from(self, source: str) -> None:
        """`model.init_from`: start from a run's best (else last) weights. The keys a defense or a learned
        activation adds to the plain network are optional, so a plain (e.g. clean-trained) run can seed a
        CAS/CIFS/EWAS/Sparta model; the plain network's keys must all fit."""
        m = self.config.model
        with torch.random.fork_rng(devices=[]):  # the plain network's key set, without consuming the RNG
            plain = set(create_model(m.arch, self.config.num_classes, **m.arch_kwargs).state_dict())
        loaded, fresh = init_weights_from(self.model, source, optional=lambda key: key not in plain)
        print(f"init_from {source}: {loaded} tensors loaded, {fresh} of the defense/activation kept fresh")

    def transfer_activations_from(self, source: str) -> None:
        """`model.activation_from`: copy (and with `activation_freeze`, freeze) a run's learned activations."""
        if not Path(source).exists():
            raise ConfigError(f"activation source {source} does not exist; pass a trained run with "
                              "--set model.activation_from=RUN (a run directory or checkpoint)")
        m = self.config.model
        transfer_activations(load_source_model(source), self.model, mapping=m.activation_mapping,
                             freeze=m.activation_freeze)

    # ---------------------------------------------------------------- one writer, resume
    def _refuse_to_overwrite(self) -> None:
        if not self.resuming and has_checkpoint(self.ckpt_dir, "last"):
            raise RobustactError(f"{self.out} already holds a run; continue it with --resume or choose a new --out")

    def _acquire(self) -> None:
        """Become the run directory's one writer (held until `fit` ends); a second writer is refused. In a job,
        rank 0 writes for all, and every rank hears whether it could."""
        if self._writer_checked:
            return
        error = None
        if self.job.main:
            try:
                if self.out.exists() and not self.out.is_dir():
                    raise RobustactError(f"--out {self.out} is a file, not a directory; choose another --out")
                make_dirs(self.out)
                self._lock = WriterLock(self.out / ".lock", f"run {self.out}").__enter__()
                self._refuse_to_overwrite()  # again, now that no one else can write it
            except RobustactError as exc:
                self._release()
                error = str(exc)
        error = distributed.broadcast_object(error)
        if error:
            raise RobustactError(error)
        self._writer_checked = True

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None
        self._writer_checked = False

    @classmethod
    def resume(cls, out_dir: str | Path, data_root: str | None = None, progress: bool = True) -> Trainer:
        """The trainer of an interrupted run, at its newest complete checkpoint (an interrupted checkpoint write is
        finished or undone first, and said so)."""
        out = Path(out_dir)
        cfg_path = out / "config.yaml"
        if not cfg_path.is_file():
            raise RobustactError(f"{out} is not a run directory (no config.yaml); nothing to resume")
        trainer = cls(load_run_config(cfg_path), out, data_root, progress, _resuming=True)
        trainer._acquire()
        try:
            trainer._restore()
        except BaseException:
            trainer._release()
            raise
        return trainer

    def _restore(self) -> None:
        if self.job.main:
            for tag in ("last", "best"):
                note = recover(self.ckpt_dir, tag)
                if note:
                    print(f"robustact: {note} ({self.ckpt_dir})", file=sys.stderr)
        distributed.barrier()  # every rank reads the checkpoint rank 0 has made whole (a file system they share)
        if has_checkpoint(self.ckpt_dir, "last"):
            info, tensors, state = load_checkpoint_state(self.ckpt_dir, "last")
            load_weights_into(self.model, tensors, f"{self.ckpt_dir}/last")
            restore_optimizer(self.optimizer, info, state)
            set_rng_state(state)
            self.start_epoch = int(info["epoch"])
            self.best = info.get("best", self.best)
            if self.job.main:
                print(f"resuming {self.out} after epoch {self.start_epoch} (its newest complete checkpoint)",
                      file=sys.stderr)
        if self.job.main:
            self.drop_metrics_after(self.start_epoch)

    def drop_metrics_after(self, epoch: int) -> None:
        """Forget metric lines of epochs past the checkpoint (written before an interruption hit), and a line
        an interruption cut off."""
        path = self.out / "metrics.jsonl"
        if path.is_file():
            keep = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("epoch", 0) <= epoch:
                        keep.append(line)
                except (ValueError, AttributeError):
                    continue
            atomic_write_text(path, "".join(line + "\n" for line in keep))

    # ---------------------------------------------------------------- loop
    def fit(self) -> Path:
        self._acquire()
        try:
            if self.job.main:
                atomic_write_text(self.out / "config.yaml", dump_config(self.config))
            if self.start_epoch >= self.epochs:
                if self.job.main:
                    print(f"run {self.out} already finished ({self.epochs} epochs)")
                return self.out
            for epoch in range(self.start_epoch, self.epochs):
                record = self.train_epoch(epoch)
                record |= self.validate()
                self.end_epoch(epoch, record)
                # Every epoch (and the job) ends together, after rank 0's checkpoint: a rank that went on while
                # rank 0 validated and died early in the next epoch made torchrun stop rank 0 before the epoch
                # was on disk. Free: the next epoch's first all-reduce would wait for rank 0 anyway.
                distributed.barrier()
            return self.out
        except RuntimeError as exc:
            if self.job.distributed and distributed.is_peer_failure(exc):
                raise distributed.peer_failure(exc) from None
            raise
        finally:
            self._release()

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step at learning rate `lr`; (detached loss, logits the accuracy is read from)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        with autocast_context(self.amp, self.device):
            loss, logits = self.objective(self.forward_model, x, y, self.ctx)
        self.optimizer.zero_grad(set_to_none=True)
        clip = self.config.training.grad_clip
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        return loss.detach(), logits.detach()

    def train_epoch(self, epoch: int) -> dict:
        loader = self.loader
        loader.set_epoch(epoch)
        n_batches = len(loader)
        sums = torch.zeros(3, device=self.device)  # loss · n, correct, aux correct (this process's share), on device
        # Label-mask defenses (CAS, EWAS, CIFS) train with the label's mask, so train_acc sees the label; the aux
        # heads' accuracy is what decides the mask at test time, and is recorded as train_aux_acc.
        has_aux, seen, lr = False, 0, self.base_lr
        start = time.perf_counter()
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{self.epochs}", disable=not self.progress,
                   leave=False, dynamic_ncols=True)
        for i, (x, y) in enumerate(loader):
            lr = lr_at(self.config.training.schedule, self.base_lr, epoch + i / n_batches, self.epochs)
            loss, logits = self.train_step(x, y, lr)
            heads = aux_logits(self.model)
            has_aux = has_aux or bool(heads)
            sums[0] += loss.float() * y.shape[0]
            sums[1] += (logits.argmax(1) == y).sum()
            if heads:
                sums[2] += torch.stack([(h.detach().argmax(1) == y).sum() for h in heads]).float().mean()
            seen += y.shape[0]
            if self.progress and (i % 10 == 9 or i == n_batches - 1):  # one host sync every 10 steps
                local = sums.tolist()
                bar.set_postfix(loss=f"{local[0] / seen:.3f}", acc=f"{local[1] / seen:.3f}",
                                img_s=f"{seen * self.job.world / (time.perf_counter() - start):.0f}", lr=f"{lr:.4f}")
            bar.update(1)
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        totals = distributed.all_reduce_sum(torch.cat([sums, sums.new_tensor([float(seen)])]))  # over the job
        total, correct, aux_correct, seen = totals.tolist()
        if not math.isfinite(total):
            raise RobustactError(f"training diverged in epoch {epoch + 1} (loss is {total}); lower the lr")
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": total / max(seen, 1),
                  "train_acc": correct / max(seen, 1)}
        if has_aux:
            record["train_aux_acc"] = aux_correct / max(seen, 1)
        return record | {"epoch_seconds": elapsed, "train_images_per_s": seen / elapsed}

    def validate(self) -> dict:
        """Clean and PGD accuracy on the held-out split (model selection happens here, never on test); by rank 0
        (the one that selects and writes) in a job."""
        if not self.job.main:
            return {}
        training = self.config.training
        n = min(training.val_n, len(self.data.val_y))
        out = {}
        if n > 0:
            out |= self._robust_accuracy(self.data.val_x[:n], self.data.val_y[:n], "val")
        if training.select_on_test:
            d = self.config.data
            x, y = test_split(d.dataset, n or 500, classes=d.classes, root=self.data_root, download=d.download)
            out |= self._robust_accuracy(x, y, "test")
        return out

    def _robust_accuracy(self, x_u8: torch.Tensor, y: torch.Tensor, prefix: str) -> dict:
        steps = self.config.training.val_attack_steps
        attack = PGD(self.ctx.eps, steps=steps, alpha=2.5 * self.ctx.eps / steps, random_start=True, seed=self.seed)
        x = x_u8.to(self.device).float().div_(255)
        clean, robust = accuracy_under(self.model, x, y.to(self.device), attack, batch_size=500)
        return {f"{prefix}_clean_acc": clean, f"{prefix}_pgd{steps}_acc": robust}

    def end_epoch(self, epoch: int, record: dict) -> None:
        if not self.job.main:  # rank 0 writes for the job
            return
        select_key = "test" if self.config.training.select_on_test else "val"
        kind = self.config.training.selection
        metric = next((v for k, v in record.items() if k.startswith(f"{select_key}_{kind}")), None)
        record["best_epoch"] = epoch + 1 if metric is not None and metric > self.best["metric"] else self.best["epoch"]
        append_line(self.out / "metrics.jsonl", json.dumps(record))
        if metric is not None and metric > self.best["metric"]:
            self.best = {"metric": metric, "epoch": epoch + 1, "selected_on": select_key, "criterion": kind}
            save_checkpoint(self.ckpt_dir, "best", self.model, None, self.best)
        info = {"epoch": epoch + 1, "best": self.best, "arch": self.config.model.arch,
                "build_kwargs": getattr(self.model, "build_kwargs", {})}
        save_checkpoint(self.ckpt_dir, "last", self.model, self.optimizer, info, rng_state())
        summary = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                            if k not in ("lr",))
        print(summary, flush=True)
