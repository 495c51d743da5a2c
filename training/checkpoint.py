"""A run's resumable state: its id, the checkpoint saved after every epoch, and where each
stage stands (epoch, best validation loss and weights, early stopping).

The run id hashes the config and the city's content (not its name or revision number), so
any store holding the same data shares the run; checkpoints live under
``checkpoint_dir/<city>/<run id>/state.pt``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from musecl_store import faults
from musecl_store.hashing import digest
from musecl_store.nn.fusion import VISUAL
from training.config import TrainConfig
from training.data import TrainingError

STAGES = (*VISUAL, "fusion", "fused")
"""Image encoders, the paper's visual fusion (``fusion``), the all-branch fusion (``fused``)."""

History = dict[str, list[dict[str, float]]]


def run_id(config: TrainConfig, content: str) -> str:
    """The run's id: its settings, the city's content digest and the trainer's stages (a
    trainer with other stages never resumes this one's checkpoints). Where checkpoints live
    is left out: moving them keeps the run."""
    settings = {k: v for k, v in config.to_dict().items() if k != "checkpoint_dir"}
    return digest(json.dumps(settings, sort_keys=True), content, STAGES)[:12]


def _on_cpu(obj: Any) -> Any:
    """``obj`` with every tensor copied to the CPU (state dicts keep their type and metadata)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        out = type(obj)((k, _on_cpu(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # module versions, read by load_state_dict
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, list | tuple):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


class Checkpoint:
    """The resumable state of a run: the stage, epoch, weights and optimiser.

    Always saved from CPU tensors and loaded onto the CPU, so a run started on a GPU resumes
    on a machine without one (and back).
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / "state.pt"

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        state: dict[str, Any] = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("stage") not in (*STAGES, "done"):
            raise TrainingError(
                f"{self.path} is not a checkpoint of this trainer (stage "
                f"{state.get('stage')!r}); delete it or train with --restart"
            )
        return state

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(_on_cpu(state), tmp)
        tmp.replace(self.path)


class RunState:
    """Where a run stands, saved (by rank 0 only) after every epoch and every stage.

    ``state`` is the checkpoint's content (None before the first epoch): the stage and the
    epoch reached, the weights and optimiser, the stage's best validation loss and weights,
    the epochs since it improved, and the history of every stage's losses.
    """

    def __init__(self, run_dir: Path, *, resume: bool, leader: bool):
        self.ckpt = Checkpoint(run_dir)
        self.leader = leader
        self.state = self.ckpt.load() if resume else None
        self.history: History = self.state["history"] if self.state else {s: [] for s in STAGES}

    def done(self, stage: str) -> bool:
        if self.state is None:
            return False
        current = self.state["stage"]  # "done" once every stage has finished
        return current == "done" or STAGES.index(stage) < STAGES.index(current)

    def start_epoch(self, stage: str) -> int:
        if self.state is not None and self.state["stage"] == stage:
            return int(self.state["epoch"]) + 1
        return 0

    def resume_optimiser(self, stage: str, opt: torch.optim.Optimizer) -> None:
        """Load the optimiser's state when the run stopped during ``stage``."""
        if self.state and self.state["stage"] == stage and self.state["opt"]:
            opt.load_state_dict(self.state["opt"])

    def early_stop(
        self,
        stage: str,
        epoch: int,
        val: float,
        module: torch.nn.Module,
        opt: torch.optim.Optimizer,
        patience: int,
        net: torch.nn.Module,
    ) -> bool:
        """Track the best weights; checkpoint; True when it is time to stop."""
        st = self.state if self.state and self.state["stage"] == stage else None
        best = st["best_loss"] if st else float("inf")
        best_state = st["best_state"] if st else None
        bad = st["bad_epochs"] if st else 0
        if val < best - 1e-6:
            best, bad = val, 0
            best_state = {k: v.clone() for k, v in module.state_dict().items()}
        else:
            bad += 1
        self._save(stage, epoch, net, opt.state_dict(), best, best_state, bad)
        faults.point("train:epoch")
        return bad >= patience

    def finish(self, stage: str, module: torch.nn.Module, net: torch.nn.Module) -> None:
        """Keep the stage's best weights and move on to the next stage."""
        if self.state and self.state.get("best_state") is not None:
            module.load_state_dict(self.state["best_state"])
        i = STAGES.index(stage)
        nxt = STAGES[i + 1] if i + 1 < len(STAGES) else "done"
        self._save(nxt, -1, net, None, float("inf"), None, 0)

    def _save(
        self,
        stage: str,
        epoch: int,
        net: torch.nn.Module,
        opt: dict[str, Any] | None,
        best: float,
        best_state: dict[str, torch.Tensor] | None,
        bad: int,
    ) -> None:
        self.state = {
            "stage": stage,
            "epoch": epoch,
            "net": net.state_dict(),
            "opt": opt,
            "best_loss": best,
            "best_state": best_state,
            "bad_epochs": bad,
            "history": self.history,
        }
        if self.leader:
            self.ckpt.save(self.state)
