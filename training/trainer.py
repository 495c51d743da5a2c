"""The MuseCL training run: similarities -> triplets -> image encoders -> fusion -> store.

Stages run in order (``remote``, ``street``, ``fusion``, ``fused``; see
:mod:`training.loop`); after every epoch the run's state is checkpointed under
``checkpoint_dir/<city>/<run id>/state.pt`` (:mod:`training.checkpoint`), so an interrupted
run resumes where it stopped and a finished one is reused. The run id hashes the config and
the city's content (not its name or revision number), so any store holding the same data
shares the run. Each epoch draws its samples from a generator seeded by (seed, stage, epoch):
a resumed run gives the same result as an uninterrupted one, and the same inputs and seed
give the same embeddings on the CPU.

:func:`train_city` reads the city in one short read-only session, trains outside any
transaction (other writers are never blocked), then writes the model version in one short
transaction (:mod:`training.writeback`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypedDict, Unpack

import torch
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from musecl_store import faults
from musecl_store.embedding.inputs import (
    RegionInputs,
    count_inputs,
    load_city_data,
    poi_text_means,
    visual_means,
)
from musecl_store.embedding.run import RegionEmbeddings, embed_regions, write_region_embeddings
from musecl_store.nn.fusion import VISUAL
from musecl_store.nn.model import MuseclNet
from musecl_store.nn.resnet import ImageEncoder, load_backbone
from musecl_store.nn.text import TextEncoder
from musecl_store.store.engine import session_factory, transaction
from musecl_store.store.tables import Revision, TextEmbedding
from training.checkpoint import RunState, run_id
from training.config import TrainConfig
from training.data import (
    TrainingError,
    check_city,
    city_content,
    split_regions,
)
from training.device import resolve_device
from training.distributed import Parallel
from training.loop import TrainingLoop
from training.writeback import (
    Fitted,
    TrainResult,
    add_model_version,
    check_unchanged,
    not_cached,
    run_metrics,
)

# The names after train_city, Trainer and RunOptions were defined here before the trainer
# was split by concern; they stay importable from here.
__all__ = ["RunOptions", "Trainer", "train_city"]


class RunOptions(TypedDict, total=False):
    """How :class:`Trainer` runs (the keyword arguments of :func:`train_city`)."""

    resume: bool
    device: str
    show_progress: bool | None
    log: Callable[[str], None]


class Trainer(TrainingLoop):
    """One training run for one city (see the module docstring).

    The constructor reads everything the run needs through ``session`` (the caller may close
    it right after); :meth:`fit` trains without touching the store; :meth:`write` stores the
    result through another session. ``options`` are those of :func:`train_city`.
    """

    def __init__(
        self,
        session: Session,
        city: str,
        config: TrainConfig,
        *,
        parallel: Parallel | None = None,
        **options: Unpack[RunOptions],
    ):
        self.t0 = time.perf_counter()
        self.par = parallel or Parallel()
        log, show_progress = options.get("log", print), options.get("show_progress")
        if not self.par.leader:  # rank 0 speaks for the run
            log, show_progress = (lambda msg: None), False
        self.config, self.log, self.show = config, log, show_progress
        self.device = self.par.device(resolve_device(options.get("device", "cpu")))
        self.data = load_city_data(session, city)
        self.has_image = check_city(self.data, config)
        content = city_content(session, self.data)
        assert content is not None, "one read snapshot showed two sets of regions"
        self.content = content
        self.run_id = run_id(config, self.content)
        self.run_dir = Path(config.checkpoint_dir) / self.data.city.name / self.run_id
        self.run = RunState(
            self.run_dir, resume=options.get("resume", True), leader=self.par.leader
        )
        self.text_encoder = TextEncoder(config.text_model)
        self.net = self._network()
        self.train_regions, self.val_regions = split_regions(self.data.n, config)
        # New cache rows wait for write(): reading must not take a write lock.
        self.pending_text: list[TextEmbedding] = []
        self.text = poi_text_means(
            session,
            self.data,
            self.text_encoder,
            config.text_batch_size,
            show_progress,
            self.pending_text,
        )

    def _network(self) -> MuseclNet:
        """The network as the checkpoint left it, else new (from the pretrained backbones
        the config names)."""
        config, state = self.config, self.run.state
        torch.manual_seed(config.seed)
        # Built on the CPU, so that the initial weights do not depend on the device.
        net = MuseclNet(
            config.dim,
            self.text_encoder.dim,
            vocabulary=sorted(set(self.data.poi_category)),
            stem=config.stem,
        )
        if state is not None:
            net.load_state_dict(state["net"])
            if state["stage"] == "done":
                self.log(f"reusing the finished run {self.run_dir} (--restart trains again)")
            else:
                self.log(
                    f"resuming {self.run_dir} at stage {state['stage']}, epoch {state['epoch'] + 1}"
                )
        else:
            for m, path in config.pretrained.items():
                if path:
                    encoder = net.encoders[m]
                    assert isinstance(encoder, ImageEncoder)
                    load_backbone(encoder, path)
        return net

    def fit(self) -> Fitted | None:
        """Train (resume, or reuse a finished run) and embed every region; no database access.
        In a data-parallel run, only rank 0 embeds and saves the model (the others: None)."""
        cfg = self.config
        self.net.to(self.device)
        for kind in VISUAL:
            self.train_images(kind)
        # embedding/run.py runs the networks on the CPU tensors it builds: the write-back
        # embeds the way re-embedding does.
        self.net.cpu()
        visual = visual_means(self.data, self.net, cfg.image_size, self.show)
        counts, mobility = count_inputs(self.data, self.net)
        inputs = RegionInputs(visual, self.text, counts, mobility)
        self.net.to(self.device)
        self.train_fusion(visual, self.text)
        self.train_fused(inputs)
        self.net.cpu()
        if not self.par.leader:
            return None
        result = embed_regions(inputs, self.net, learn_imputation=True)
        checkpoint = self.net.save(
            self.run_dir / "model.pt",
            {**cfg.to_dict(), "text_dim": self.text_encoder.dim, "city": self.data.city.name},
        )
        return Fitted(result, checkpoint, time.perf_counter() - self.t0)

    def write(self, session: Session, fitted: Fitted) -> TrainResult:
        """Store the run as a new, active model version with its embeddings; the caller
        commits. Refuses when the city's training inputs changed since they were read."""
        return self._write(session, fitted.result, fitted.checkpoint, fitted.seconds)

    def _write(
        self, s: Session, result: RegionEmbeddings, checkpoint: Path, seconds: float
    ) -> TrainResult:
        data, history = self.data, self.run.history
        check_unchanged(s, data, self.content)
        s.add_all(not_cached(s, self.pending_text))
        keep = self.has_image
        if not keep.all():  # skip_regions_without_images: leave them out
            self.log(f"{int((~keep).sum())} region(s) without images are left unembedded")
            data = data.only_regions(keep)
            result = result.only(keep)
        rev = Revision(operation="train", city_id=data.city.id)
        s.add(rev)
        s.flush()
        metrics = run_metrics(history, seconds, result)
        mv = add_model_version(s, data, self.config, metrics, checkpoint)
        counts = write_region_embeddings(s, data.region_pks, mv.id, result, rev.id)
        rev.summary = {"model_version": mv.id, "embeddings": counts}
        s.flush()
        return TrainResult(mv.id, rev.id, self.run_dir, checkpoint, history, counts, seconds)


@contextlib.contextmanager
def _read_session(engine: Engine) -> Iterator[Session]:
    """A session for reading only, closed (its transaction ended) when the block ends."""
    with session_factory(engine)() as session:
        if engine.dialect.name == "postgresql":
            # One snapshot for all the reads, as SQLite's transactions give: an ingest that
            # commits midway is either wholly seen or not at all.
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        yield session


def train_city(
    engine: Engine,
    city: str,
    config: TrainConfig,
    *,
    resume: bool = True,
    device: str = "cpu",
    show_progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train MuseCL on a city in the store and commit a new, active model version with the
    embeddings of every region.

    The store is read in one short session and written in one short transaction; training in
    between holds no connection. ``device`` is ``cpu`` (default: reproducible), ``cuda`` or
    ``auto``; it does not change the run id, so a run may resume on another device.

    Under torchrun (``WORLD_SIZE`` > 1 in the environment) this process is one rank of a
    data-parallel run (:mod:`training.distributed`): ``config.batch_size`` and the other
    batch sizes are global; rank 0 writes the model version once every rank has finished,
    and every rank returns it.
    """
    parallel = Parallel.from_env(resolve_device(device))
    try:
        with _read_session(engine) as session:
            trainer = Trainer(
                session,
                city,
                config,
                resume=resume,
                device=device,
                show_progress=show_progress,
                log=log,
                parallel=parallel,
            )
        faults.point("train:read")
        fitted = trainer.fit()
        faults.point("train:fitted")
        # Every rank has finished: one that died fails the others here, before any write.
        parallel.barrier()
        if fitted is None:  # not rank 0: its result, or its failure
            shared = parallel.share(None)
            if isinstance(shared, TrainResult):
                return shared
            raise TrainingError(f"rank 0 could not write the model version: {shared}")
        try:
            with transaction(engine, write=True) as session:
                out = trainer.write(session, fitted)
                faults.point("train:written")
            faults.point("train:committed")
        except BaseException as exc:
            parallel.share(str(exc) or type(exc).__name__)
            raise
        return parallel.share(out)
    finally:
        parallel.close()
