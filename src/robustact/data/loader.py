"""A batch iterator that keeps a whole split on the device as uint8 and augments batches there.

Keeping the data resident (as airbench does) removes the host->device copy and worker processes
from the training loop. All randomness of an epoch (order, crop offsets, flips) is drawn up front
from a CPU generator seeded by (seed, epoch), so the batches are identical on every device and an
interrupted run resumes with `set_epoch`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from robustact.errors import DataError


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose state depends only on (seed, epoch), well mixed so nearby seeds differ."""
    state = np.random.SeedSequence([int(seed) % 2**63, int(epoch) % 2**63]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def shift_crop_flip(
    x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int
) -> torch.Tensor:
    """Per-example `RandomCrop(size, padding=pad)` (zero padding) + horizontal flip, in one gather.

    dy, dx in [0, 2*pad] pick the window of the zero-padded image; flip is a bool per example.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h  # (B, H)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


class DeviceLoader:
    """Iterate (float images in [0, 1], int64 labels) batches of a device-resident uint8 split.

    train=True shuffles each epoch and (with augment) applies zero-padded random crop + flip; train=False
    yields the data in order, unaugmented. The epoch advances by one after each complete pass; call
    `set_epoch(e)` to pin it (e.g. when resuming).

    With `world` > 1 (one process of a distributed job), `batch_size` is the global batch: every process draws
    the same epoch plan and yields its `rank`-th share (batch_size / world examples) of each global batch, so
    the union over the processes is exactly the batch one process would see.
    """

    def __init__(
        self,
        images_uint8: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        device: torch.device | str | None = None,
        train: bool = True,
        augment: bool = True,
        seed: int = 0,
        drop_last: bool | None = None,
        pad: int = 4,
        flip: bool = True,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
            raise DataError(
                "DeviceLoader wants uint8 images (N, C, H, W), "
                f"got {images_uint8.dtype} {tuple(images_uint8.shape)}"
            )
        if labels.dim() != 1 or len(labels) != len(images_uint8):
            raise DataError(f"{len(images_uint8)} images but labels of shape {tuple(labels.shape)}")
        if batch_size < 1 or pad < 0:
            raise DataError(f"batch_size must be >= 1 and pad >= 0, got {batch_size} and {pad}")
        if not dtype.is_floating_point:
            raise DataError(f"dtype must be a floating type, got {dtype}")
        if world < 1 or not 0 <= rank < world or batch_size % world:
            raise DataError(f"a global batch of {batch_size} does not split over {world} processes; make it a "
                            f"multiple of {world}")
        self.device = torch.device(device) if device is not None else images_uint8.device
        self.images = images_uint8.to(self.device).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = int(batch_size)
        self.train = train
        self.augment = augment and train and (pad > 0 or flip)
        self.seed = int(seed)
        self.drop_last = train if drop_last is None else bool(drop_last)
        self.pad = int(pad)
        self.flip = flip
        self.channels_last = channels_last
        self.dtype = dtype
        self.rank, self.world = int(rank), int(world)
        self.epoch = 0

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_plan(self, epoch: int) -> dict[str, torch.Tensor]:
        """The epoch's order and augmentation draws (CPU tensors), aligned with positions in the order."""
        n = self.num_examples
        if not self.train:
            return {"order": torch.arange(n)}
        gen = epoch_generator(self.seed, epoch)
        plan = {"order": torch.randperm(n, generator=gen)}
        if self.augment:
            plan["dy"] = torch.randint(0, 2 * self.pad + 1, (n,), generator=gen)
            plan["dx"] = torch.randint(0, 2 * self.pad + 1, (n,), generator=gen)
            flips = torch.rand(n, generator=gen) < 0.5
            plan["flip"] = flips if self.flip else torch.zeros_like(flips)
        return plan

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32).div_(255.0)
        if self.dtype != torch.float32:
            x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        plan = {k: v.to(self.device) for k, v in self.epoch_plan(epoch).items()}  # one copy per epoch
        order = plan["order"] if self.train else None
        stop = len(self) * self.batch_size if self.drop_last else self.num_examples
        for start in range(0, stop, self.batch_size):
            pos = slice(start, min(start + self.batch_size, stop))
            if not self.train:  # in order: plain slices, no gather
                yield self._to_float(self.images[pos]), self.labels[pos]
                continue
            if self.world > 1:  # this process's share of the global batch
                share = (pos.stop - pos.start) // self.world
                pos = slice(pos.start + self.rank * share, pos.start + (self.rank + 1) * share)
            idx = order[pos]
            x = self.images[idx]
            if self.augment:
                x = shift_crop_flip(x, plan["dy"][pos], plan["dx"][pos], plan["flip"][pos], self.pad)
            yield self._to_float(x), self.labels[idx]
        self.epoch = epoch + 1

    def __repr__(self) -> str:
        return (
            f"DeviceLoader(n={self.num_examples}, batch_size={self.batch_size}, device={self.device}, "
            f"train={self.train}, augment={self.augment}, epoch={self.epoch})"
        )
