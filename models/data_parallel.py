"""Data-parallel runs of ``models.train`` under ``torchrun``: one process per rank.

    torchrun --standalone --nproc_per_node 2 -m models.train --model cnn --dataset digits

What changes when ``WORLD_SIZE`` > 1 (``torchrun`` sets it):

- the process group is joined (``gk.distributed``: NCCL on cuda, gloo on CPU) and the
  model wrapped in ``DistributedDataParallel`` (rank 0's initial values broadcast);
  ``--sync-batchnorm`` converts its batch norms to ``SyncBatchNorm``;
- each rank trains on its ``DistributedSampler`` shard: ``--batch-size`` is the batch of
  one rank, so the global batch is ``--batch-size x world size`` (PyTorch's convention;
  the learning rate is not rescaled: raise ``--lr`` yourself if you want the linear
  rule); every rank evaluates its share of the test set and the counts are summed;
- each rank's augmentation and dropout draws are seeded by ``(seed, rank, epoch)`` at
  the start of every epoch, so a resumed run replays exactly with one checkpoint;
- only rank 0 prints (progress bar, epoch lines, the JSON summary), writes checkpoints
  and plots; ``--resume`` needs the same world size (the checkpoint records it) and
  the checkpoint file readable by every rank;
- a rank that fails prints one ``error: rank R: ...`` line; the others then fail at
  their next collective (the peer closed its connection, or ``--dist-timeout``
  passes) or are stopped by torchrun (SIGTERM), each with one such line; none hangs.
"""

from __future__ import annotations

import os
import signal

import numpy as np

import gpukernels as gk
import gpukernels.distributed as dist
from gpukernels.data import DataLoader, DistributedSampler


class Stopped(Exception):
    """SIGTERM from the launcher (torchrun stops every rank when one has failed)."""


def world_size_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


class Single:
    """The one-process run: every hook is the identity."""

    rank, world_size, is_main = 0, 1, True

    def wrap(self, model):
        return model

    def train_loader(self, x, y, batch_size, seed, augment, drop_last):
        return DataLoader(x, y, batch_size, shuffle=True, seed=seed, augment=augment, drop_last=drop_last)

    def test_part(self, x, y):
        return x, y

    def start_epoch(self, loader, epoch, seed):
        pass

    def epoch_totals(self, loss, correct, seen, test_correct, test_total):
        return loss, correct, seen, test_correct, test_total

    def barrier(self):
        pass

    def close(self):
        pass


class DataParallel(Single):
    """The ranks of a torchrun job (see the module docstring)."""

    def __init__(self, timeout_s: float, sync_batchnorm: bool):
        signal.signal(signal.SIGTERM, _stop)
        dist.init_process_group(timeout=timeout_s)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.sync_batchnorm = sync_batchnorm

    def wrap(self, model):
        if self.sync_batchnorm:
            model = gk.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return gk.nn.parallel.DistributedDataParallel(model)

    def train_loader(self, x, y, batch_size, seed, augment, drop_last):
        sampler = DistributedSampler(len(x), self.world_size, self.rank, shuffle=True, seed=seed,
                                     drop_last=drop_last)
        return DataLoader(x, y, batch_size, seed=seed, augment=augment, drop_last=drop_last, sampler=sampler)

    def test_part(self, x, y):
        """This rank's examples of the test set (every ``world``-th: no padding, so the
        summed counts are the accuracy on exactly the test set)."""
        return x[self.rank::self.world_size], y[self.rank::self.world_size]

    def start_epoch(self, loader, epoch, seed):
        loader.sampler.set_epoch(epoch)
        state = np.random.SeedSequence([seed, self.rank, epoch])
        loader.rng = np.random.default_rng(state)
        gk.manual_seed(int(state.generate_state(1)[0]))

    def epoch_totals(self, loss, correct, seen, test_correct, test_total):
        """Sums over the ranks (one all-reduce): mean loss, then the counts."""
        v = np.array([loss, correct, seen, test_correct, test_total], dtype=np.float64)
        dist.all_reduce(v)
        return v[0] / self.world_size, int(round(v[1])), int(v[2]), int(round(v[3])), int(v[4])

    def barrier(self):
        dist.barrier()

    def close(self):
        dist.destroy_process_group()


def _stop(signum, frame):
    raise Stopped("stopped by the launcher (SIGTERM): another rank failed")


def reporting() -> None:
    """An error is being reported: a SIGTERM from now on just ends the process (no
    second error line, no traceback from inside the handler)."""
    if signal.getsignal(signal.SIGTERM) is _stop:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def setup(timeout_s: float, sync_batchnorm: bool) -> Single:
    """``DataParallel`` under a launcher with ``WORLD_SIZE`` > 1, else ``Single``."""
    if world_size_from_env() > 1:
        return DataParallel(timeout_s, sync_batchnorm)
    return Single()
