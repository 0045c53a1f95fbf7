"""Data order that depends only on (seed, epoch, rank), so a resumed run sees the same batches.

Both stages use :class:`EpochShuffleSampler` for training (shuffled) and validation (in order),
and :class:`ResumableLoader` for training: Lightning saves its ``state_dict`` in every
checkpoint, so a run killed mid-epoch resumes at the next unseen batch, not at the start of
the epoch. Under DDP the sampler shards the data itself (Lightning's ``use_distributed_sampler``
is off): rank r takes items r, r + world, ... of the epoch's permutation.

Worker processes (:func:`resolve_workers`): ``"auto"`` gives data decoded per item from files
(image folders) ``min(CPUs per process - 1, 8)`` workers, kept alive across epochs, and
in-memory or memory-mapped sets none (there a worker only adds start-up time). Batches go to
pinned memory when the Trainer's accelerator is a CUDA GPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


class EpochShuffleSampler(Sampler[int]):
    """This rank's share of a permutation of range(n) drawn from ``seed`` and the epoch.

    ``shuffle=False`` keeps dataset order. Training shards (``pad=True``) are padded by
    wrapping around so every rank gets the same number of items, as DDP needs; validation
    shards (``pad=False``) are disjoint and together hold every item exactly once.
    Lightning calls ``set_epoch`` at the start of every epoch.
    """

    def __init__(
        self, n: int, seed: int = 0, *, shuffle: bool = True, rank: int = 0, world_size: int = 1,
        pad: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.n, self.seed, self.epoch = n, seed, 0
        self.shuffle, self.rank, self.world_size, self.pad = shuffle, rank, world_size, pad
        self._resume: tuple[int, int] | None = None  # (epoch, items of this shard to skip)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self._resume is not None and self._resume[0] != epoch:
            self._resume = None  # a resume skip applies to its own epoch only

    def resume_at(self, epoch: int, skip: int) -> None:
        """Start ``epoch``'s iteration after its first ``skip`` items (a mid-epoch resume)."""
        self.epoch = epoch
        self._resume = (epoch, max(0, int(skip)))

    def _shard(self) -> np.ndarray:
        # an int64 array, not a list of Python ints (~36 bytes each): the order of a
        # million items costs 8 MB, not 40
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).numpy()
        else:
            order = np.arange(self.n, dtype=np.int64)
        if self.world_size == 1:
            return order
        if self.pad and self.n % self.world_size:
            total = -(-self.n // self.world_size) * self.world_size
            order = np.resize(order, total)  # wraps around: repeats from the start
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.n
        if self.pad:
            return -(-self.n // self.world_size)
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self) -> Iterator[int]:
        shard = self._shard()
        if self._resume is not None and self._resume[0] == self.epoch:
            shard = shard[self._resume[1]:]
        return map(int, shard)


class ResumableLoader(DataLoader):
    """A training DataLoader whose position Lightning saves in each checkpoint.

    ``progress()`` returns (epoch, batches of that epoch already trained on); it reads the
    Trainer's loop counters, which are exact at save time (unlike counting yielded batches,
    which runs ahead by the prefetched ones). Needs an :class:`EpochShuffleSampler`.
    """

    def __init__(self, *args: Any, progress: Callable[[], tuple[int, int]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochShuffleSampler):
            raise TypeError("ResumableLoader needs an EpochShuffleSampler")
        self._progress = progress

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self._progress()
        return {"epoch": int(epoch), "batches": int(batches), "batch_size": int(self.batch_size or 1),
                "world_size": int(self.sampler.world_size)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # Ranks take items r, r + W, ... of one permutation, so after k items per rank the
        # first k * W items of the epoch are used, whatever W was: resuming with another
        # number of devices skips those items overall (exact when W' divides k * W)
        used = state["batches"] * state.get("batch_size", 1) * state.get("world_size", 1)
        self.sampler.resume_at(state["epoch"], -(-used // self.sampler.world_size))


MAX_AUTO_WORKERS = 8


def resolve_workers(num_workers: int | str, dataset: Any, processes: int = 1) -> int:
    """``--num-workers``: an int >= 0 as given, or ``"auto"``: ``min(C - 1, 8)`` where C is
    this machine's usable CPUs per training process, when ``dataset`` decodes files per item
    (``dataset.reads_files``, e.g. an image folder); 0 for in-memory and memory-mapped sets,
    whose items are a cheap slice (a worker would only add start-up time)."""
    if num_workers == "auto":
        if not getattr(dataset, "reads_files", False):
            return 0
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(0, min((cpus or 1) // max(1, processes) - 1, MAX_AUTO_WORKERS))
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be 'auto' or an int >= 0, got {num_workers!r}")
    return num_workers


def on_cuda(trainer: Any) -> bool:
    """True when an attached Trainer runs on CUDA GPUs (batches then go to pinned memory)."""
    if trainer is None:
        return False
    from pytorch_lightning.accelerators import CUDAAccelerator

    return isinstance(trainer.accelerator, CUDAAccelerator)


def make_loader(
    dataset: Any, *, batch_size: int, seed: int, training: bool, trainer: Any = None,
    shuffle: bool | None = None, resume_state: dict[str, int] | None = None,
    num_workers: int | str = 0, pin_memory: bool | None = None, **kwargs: Any,
) -> DataLoader:
    """The loader both stages use: this rank's share of ``dataset`` in (seed, epoch) order.

    training: shuffled (unless ``shuffle=False``), shards padded to equal length (DDP needs
    it), and with a Trainer attached a :class:`ResumableLoader` started at ``resume_state``.
    Otherwise: dataset order (unless ``shuffle``), disjoint shards. ``num_workers``: see
    :func:`resolve_workers`; training loaders and those of a Trainer keep their workers
    across epochs. ``pin_memory``
    None: when the Trainer is on a CUDA GPU. Other ``kwargs`` go to DataLoader.
    """
    rank, world = dist_info(trainer)
    processes = int(getattr(trainer, "num_devices", 1) or 1) if trainer is not None else 1
    workers = resolve_workers(num_workers, dataset, processes)
    # workers persist for loaders iterated every epoch (training, and validation in a fit)
    kwargs.update(num_workers=workers, persistent_workers=workers > 0 and (training or trainer is not None),
                  pin_memory=on_cuda(trainer) if pin_memory is None else pin_memory)
    sampler = EpochShuffleSampler(len(dataset), seed, shuffle=training if shuffle is None else shuffle,
                                  rank=rank, world_size=world, pad=training)
    if not (training and trainer is not None):
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
    loader = ResumableLoader(dataset, batch_size=batch_size, sampler=sampler,
                             progress=lambda: trainer_progress(trainer), **kwargs)
    if resume_state:
        loader.load_state_dict(resume_state)
    return loader


def saved_loader_state(checkpoint: dict[str, Any]) -> dict[str, int] | None:
    """The training loader's position stored in a Lightning checkpoint dict, if any.

    Lightning (2.6) restores stateful loaders only when it builds the loader after the
    checkpoint is loaded, but ``estimated_stepping_batches`` (our lr schedule) builds it
    earlier, so the trainers read the position here and hand it to the data module.
    """
    try:
        states = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    except (KeyError, TypeError):
        return None
    return dict(states[0]) if states and isinstance(states[0], dict) else None


def trainer_progress(trainer: Any) -> tuple[int, int]:
    """(epoch, training batches taken in it) from a Lightning Trainer's loop counters.

    ``ready`` counts the batches the loop has taken this epoch, including the one whose
    ``on_train_batch_end`` is saving the checkpoint (``processed``/``completed`` lag it there).
    """
    loop = trainer.fit_loop
    ep = loop.epoch_progress.current
    if ep.processed > ep.completed:
        # saved after the epoch's last batch (e.g. at validation end): the next one is new
        return int(ep.processed), 0
    return int(ep.processed), int(loop.epoch_loop.batch_progress.current.ready)


def dist_info(trainer: Any) -> tuple[int, int]:
    """(rank, world size) of an attached Trainer, else (0, 1)."""
    if trainer is None:
        return 0, 1
    return int(trainer.global_rank), int(trainer.world_size)
