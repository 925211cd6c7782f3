"""Several processes, one job: PyTorch's own `torch.distributed` under `torchrun` (no launcher of our own).

`torchrun --nproc_per_node=N -m robustact train|eval ...` starts N processes with RANK, WORLD_SIZE, LOCAL_RANK
and the rendezvous in their environment; `setup` joins them into one process group — NCCL on CUDA (each process
on GPU `cuda:LOCAL_RANK`), gloo on CPU. Without those variables everything here is a no-op for one process, so
the same code runs alone and in a job. Rank 0 is the one that writes files and prints; the others compute.

`GlobalBatchNorm` is batch norm over the whole global batch (statistics all-reduced with autograd), the CPU/gloo
counterpart of `torch.nn.SyncBatchNorm` (which needs GPUs): `training.sync_bn` converts a model's BatchNorm2d to
one or the other.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from robustact.errors import RobustactError


@dataclass(frozen=True)
class Job:
    """This process's place in the job: rank among `world` processes; `local_rank` on this machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched() -> bool:
    """Started by torchrun (or anything that sets WORLD_SIZE > 1)?"""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Job:
    if not (dist.is_available() and dist.is_initialized()):
        return Job()
    return Job(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def setup(device: str | None = None) -> tuple[Job, str | None]:
    """Join the job torchrun started (once); returns it and the device this process should use (`cuda:LOCAL_RANK`
    on GPUs, else the one asked for). Alone, returns a one-process job and `device` unchanged."""
    if not launched():
        return Job(), device
    if not dist.is_available():
        raise RobustactError("this PyTorch build has no torch.distributed; run one process, without torchrun")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device in (None, "auto") or str(device).startswith("cuda"))
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("ROBUSTACT_DIST_TIMEOUT", "1800")))
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
        signal.signal(signal.SIGTERM, _stopped_by_launcher)
    return current(), f"cuda:{local}" if cuda else "cpu"


def _stopped_by_launcher(signum, frame) -> None:
    """torchrun stops the other processes when one fails: say so in one line (the run stays resumable)."""
    raise RobustactError(f"rank {current().rank} was stopped by the launcher because another process of this job "
                         "failed; the run resumes from its last complete checkpoint: run the same torchrun command "
                         "with `train --resume RUN` (any number of processes)")


def barrier() -> None:
    if current().distributed:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the job, in place (a one-process job leaves it as it is)."""
    if current().distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if current().distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_object(obj, src: int = 0):
    """`obj` of rank `src`, on every rank (pickled by torch.distributed: for small Python values only)."""
    if not current().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn, *args):
    """`fn(*args)` on rank 0 (files, locks); a RobustactError it raises is raised on every rank, so that no rank
    goes on alone. Returns fn's value on rank 0, None elsewhere."""
    error, value = None, None
    if current().main:
        try:
            value = fn(*args)
        except RobustactError as exc:
            error = str(exc)
    error = broadcast_object(error)
    if error:
        raise RobustactError(error)
    return value


def shutdown(finished: bool = False) -> None:
    """Leave the job's process group. After a command that finished on this rank, first wait (at most a minute)
    for the others: a rank that tears gloo down while a peer still talks to it can abort at exit ("terminate
    called without an active exception", seen in CI on 2-process runs that had trained correctly). After an error
    the peers are stopped by torchrun, so nothing waits."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if finished:
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=timedelta(seconds=60))
            else:
                dist.barrier()
        except Exception:  # a peer that is gone: nothing left to wait for
            pass
    dist.destroy_process_group()


_PEER_SIGNS = ("connection closed", "connection reset", "broken pipe", "timed out", "timeout", "nccl", "gloo",
               "peer", "socket")


def is_peer_failure(exc: BaseException) -> bool:
    """Did a collective fail because another process of the job went away (not a bug of this one)?"""
    dist_error = getattr(dist, "DistError", ())
    text = str(exc).lower()
    return isinstance(exc, dist_error) or any(sign in text for sign in _PEER_SIGNS)


def peer_failure(exc: BaseException) -> RobustactError:
    """The one line for a collective that failed because another process of the job stopped."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return RobustactError(f"another process of this {current().world}-process job stopped ({first[:160]}); the run "
                          "resumes from its last complete checkpoint: run the same torchrun command with "
                          "`train --resume RUN` (any number of processes)")


class _SumOverJob(torch.autograd.Function):
    """All-reduce (sum) with its gradient: every rank's output is the sum of the inputs, so the gradient of an
    input is the sum over ranks of the output gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch: per-channel sums, sums of
    squares and counts are all-reduced (with autograd, so gradients flow through them too). Alone it is plain
    batch norm. State-dict names are BatchNorm2d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and current().distributed):
            return super().forward(x)
        n_local = x.numel() // x.shape[1]
        stats = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)),
                           x.new_full((1,), float(n_local))])
        stats = _SumOverJob.apply(stats)
        c = x.shape[1]
        count = stats[-1]
        mean = stats[:c] / count
        var = (stats[c:2 * c] / count - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1), alpha=m)
        y = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_sync_batchnorm(model: nn.Module, cuda: bool) -> nn.Module:
    """BatchNorm2d -> torch's SyncBatchNorm on GPUs, `GlobalBatchNorm` on CPU (parameters and buffers kept)."""
    if cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats).to(child.weight.device if child.affine else "cpu")
            new.load_state_dict(child.state_dict())
            setattr(model, name, new)
        else:
            convert_sync_batchnorm(child, cuda)
    return model
