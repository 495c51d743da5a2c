"""``musecl train --nproc N``: N training processes on this machine, through torch's elastic
launcher (what ``torchrun --standalone --nproc-per-node N`` runs), one rank each.

Each rank opens the store itself and runs :func:`training.trainer.train_city`, which joins
the process group that the launcher describes in its environment. When a rank dies, the
launcher stops the others and :func:`launch` raises :class:`DistributedTrainingError`,
naming the rank and how it ended; rank 0 writes the model version only after every rank has
finished training, in one transaction, so a failed job leaves none half-written (the
checkpoint of the last finished epoch is kept: the same command resumes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record

from musecl_store.errors import MuseclError
from musecl_store.settings import Settings


class DistributedTrainingError(MuseclError, RuntimeError):
    """A rank of a data-parallel training job failed (the message names it and how)."""


@dataclass(frozen=True)
class RankJob:
    """What every rank needs to train (picklable: ranks are started with ``spawn``)."""

    url: str
    settings: Settings
    city: str
    config: dict[str, Any]
    resume: bool
    device: str
    show_progress: bool | None
    log_to: str | None  # "stdout", "stderr" or None (quiet)


@record  # a rank's exception goes to the launcher, which names it in the error
def _rank_main(job: RankJob) -> Any:
    """One rank: open the store, train (rank 0 writes); returns the model version."""
    import torch

    from musecl_store.store.schema import checked_engine
    from training.config import TrainConfig
    from training.trainer import train_city

    if "OMP_NUM_THREADS" not in os.environ:  # share the cores between the ranks
        ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks))
    stream = {"stdout": sys.stdout, "stderr": sys.stderr}.get(job.log_to or "")

    def log(msg: str) -> None:
        if stream is not None:
            print(msg, file=stream, flush=True)

    engine = checked_engine(job.url, job.settings)
    try:
        return train_city(
            engine,
            job.city,
            TrainConfig.from_dict(job.config),
            resume=job.resume,
            device=job.device,
            show_progress=job.show_progress,
            log=log,
        )
    finally:
        engine.dispose()


def _described(failures: dict[int, Any]) -> str:
    """'rank 1 (pid 123) was killed by SIGKILL; rank 0 (pid 122) exited with code 1: ...',
    the first to fail first."""
    parts = []
    for rank, f in sorted(failures.items(), key=lambda kv: (kv[1].timestamp, kv[0])):
        if f.exitcode < 0:
            how = f"was killed by {f.signal_name()}"
        else:
            how = f"exited with code {f.exitcode}"
            message = str(f.message or "").strip()
            if message and not message.startswith("To enable traceback"):
                how += f": {message.splitlines()[-1][:300]}"
        parts.append(f"rank {rank} (pid {f.pid}) {how}")
    return "; ".join(parts)


def launch(nproc: int, job: RankJob) -> Any:
    """Train on ``nproc`` local processes; rank 0's result (the written model version).

    Raises:
        DistributedTrainingError: a rank failed or was killed; the others were stopped.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise DistributedTrainingError(f"--nproc must be at least 1, not {nproc}")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"musecl-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port of this machine (torchrun --standalone)
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    try:
        with _quiet_launcher():
            results = elastic_launch(config, _rank_main)(job)
    except ChildFailedError as exc:
        raise DistributedTrainingError(
            f"distributed training on {nproc} processes failed: {_described(exc.failures)}"
        ) from None
    return results[0]


@contextlib.contextmanager
def _quiet_launcher() -> Iterator[None]:
    """The launcher logs each failure with the rank's traceback: the error raised in its
    place says it in one line."""
    loggers = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def train_parallel(engine: Engine, job: RankJob, nproc: int) -> Any:
    """:func:`launch` for the facade: the job on ``nproc`` processes; rank 0's result.

    Raises:
        DistributedTrainingError: a rank failed; the message also says whether rank 0 had
            written its model version before (else the checkpoint is kept to resume from).
    """
    from musecl_store.store.cities import get_city
    from musecl_store.store.engine import transaction
    from musecl_store.store.tables import ModelVersion

    def newest() -> int | None:
        with transaction(engine) as s:
            return s.scalar(
                select(func.max(ModelVersion.id)).where(
                    ModelVersion.city_id == get_city(s, job.city).id
                )
            )

    before = newest()  # also checks that the store and the city exist
    try:
        return launch(nproc, job)
    except DistributedTrainingError as exc:
        after = newest()
        written = (
            f"Rank 0 had written model version {after} before"
            if after != before
            else "No model version was written; the checkpoint of the last finished "
            "epoch is kept, so the same command resumes"
        )
        raise DistributedTrainingError(f"{exc}. {written}") from None
