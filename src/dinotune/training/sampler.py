"""The one seeded, resumable sampler every training verb uses (fine-tuning, segmentation, pretraining).

Exact resume with any number of DataLoader workers: the loader's position (epoch, batches consumed)
is part of every Lightning checkpoint through `ResumableLoader.state_dict`, and is restored before
the resumed epoch's iterator exists, so the order is that epoch's and the skip lands in it.
Augmentations are seeded by (seed, epoch, index) through the keys `epoch * n + index`, so a
replayed batch is the same batch whichever worker decodes it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochSampler(Sampler[int]):
    """Shuffles with `seed + epoch`, shards across DDP ranks itself, and yields `epoch * n + index`
    so datasets know the epoch. Lightning calls `set_epoch` at each epoch start; the Trainer is built
    with `use_distributed_sampler=False` so it does not wrap this sampler.

    `indices` (e.g. drawn once by a class-balancing weighted sampler, with repeats) replace
    `range(n)` as the population shuffled every epoch.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, indices: Sequence[int] | None = None) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        self.population = torch.as_tensor(list(indices) if indices is not None else range(n), dtype=torch.long)
        self.skip = 0  # indices of this rank to drop once, to resume mid-epoch (see ResumableLoader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.population) // _rank_world()[1]

    def __iter__(self) -> Iterator[int]:
        rank, world = _rank_world()
        order = self.population
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = order[torch.randperm(len(order), generator=generator)]
        keys = (self.epoch * self.n + order)[: len(self) * world][rank::world].tolist()[self.skip :]
        self.skip = 0
        return iter(keys)


class ResumableLoader(DataLoader):
    """A DataLoader over an `EpochSampler` whose position Lightning checkpoints and restores.

    Lightning restarts a plain DataLoader at its first batch (replaying part of an interrupted epoch)
    and creates the resumed epoch's iterator before calling `set_epoch`. Lightning saves `state_dict()`
    in checkpoints and calls `load_state_dict` before creating the iterator, so restoring the epoch and
    skipping the batches already consumed makes resume exact, with any number of workers or ranks.
    """

    _consumed = 0

    def __iter__(self) -> Iterator[Any]:
        self._consumed = 0
        for batch in super().__iter__():
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self._consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # saved after an epoch's last batch: the next epoch starts fresh
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.skip = batches * (self.batch_size or 1)


class EpochSeeded(Dataset):
    """Keys `epoch * n + index` -> item `index`, with the albumentations pipeline (or the transform's own
    `set_random_seed`, when it draws numbers besides its pipeline) seeded by (seed, epoch, index), for
    datasets that do not read the epoch themselves."""

    def __init__(self, base: Dataset, seed: int) -> None:
        self.base, self.seed, self.n = base, seed, len(base)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int) -> dict[str, Any]:
        epoch, index = divmod(int(key), self.n)
        transform = getattr(self.base, "transform", None)
        seed = (self.seed * 7919 + epoch * 1_000_003 + index) % 2**31
        if hasattr(transform, "set_random_seed"):  # a transform with random draws of its own seeds them all
            transform.set_random_seed(seed)
            return self.base[index]
        pipeline = getattr(transform, "pipeline", None)
        if pipeline is not None and hasattr(pipeline, "set_random_seed"):
            pipeline.set_random_seed(seed)
        return self.base[index]


def resumable_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    num_workers: int,
    indices: Sequence[int] | None = None,
    drop_last: bool = True,
    collate_fn: Any = None,
) -> ResumableLoader:
    """The training loader: `dataset` wrapped by `EpochSeeded`, shuffled by `EpochSampler` (`collate_fn`:
    e.g. detection's, whose images hold different numbers of boxes)."""
    sampler = EpochSampler(len(dataset), seed=seed, indices=indices)  # type: ignore[arg-type]
    return ResumableLoader(
        EpochSeeded(dataset, seed),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
    )
