"""Experiment tracking for ``blocksearch train --report-to``, off by default and no mandatory dependency: each
library's own logger on worker 0 (Ray's MLflow/W&B logger callbacks are Tune callbacks, not Ray Train's).

- ``tensorboard``: ``torch.utils.tensorboard.SummaryWriter`` into ``DIR/tensorboard`` (needs the tensorboard
  package); a resumed run purges the events past its checkpoint (``purge_step``).
- ``mlflow``: ``mlflow.log_metric`` to ``$MLFLOW_TRACKING_URI``, else ``sqlite:///DIR/mlflow.db`` (MLflow 3
  refuses a ``file:`` store by default); a resumed run logs into the same MLflow run.
- ``wandb``: ``wandb.log`` (``WANDB_MODE=offline`` for no network); a resumed run resumes the same W&B run.
The run ids are kept in ``DIR/tracking.json``. The libraries are imported by name when chosen.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from blocksearch.errors import BlocksearchError

TRACKERS = ("none", "tensorboard", "mlflow", "wandb")
# tracker -> (module imported, pip package)
PACKAGES = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
            "wandb": ("wandb", "wandb")}
EXPERIMENT = "blocksearch-train"


def require(tracker: str):
    """The library of ``tracker``; a one-line error naming the package to install when it is missing."""
    if tracker not in TRACKERS:
        raise BlocksearchError(f"--report-to {tracker!r}; allowed: {', '.join(TRACKERS)}")
    if tracker == "none":
        return None
    module, package = PACKAGES[tracker]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BlocksearchError(f"--report-to {tracker} needs `pip install {package}` (or `pip install "
                               f"blocksearch[tracking]`)") from None


class Tracker:
    """``log(step, metrics)`` to the chosen library; ``close()`` at the end."""

    def __init__(self, tracker: str, folder: Path, start_step: int, params: dict, run_name: str):
        self.kind, self.folder = tracker, Path(folder)
        lib = require(tracker)
        ids_path = self.folder / "tracking.json"
        ids = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
        if tracker == "tensorboard":
            self.writer = lib.SummaryWriter(str(self.folder / "tensorboard"),
                                            purge_step=start_step + 1 if start_step else None)
            self.writer.add_text("settings", json.dumps(params, indent=1, default=str), start_step)
        elif tracker == "mlflow":
            self.lib = lib
            lib.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.folder / 'mlflow.db'}")
            lib.set_experiment(EXPERIMENT)
            run = lib.start_run(run_id=ids.get("mlflow")) if ids.get("mlflow") else lib.start_run(run_name=run_name)
            if "mlflow" not in ids:
                lib.log_params({k: str(v)[:500] for k, v in _flat(params).items()})
            ids["mlflow"] = run.info.run_id
        elif tracker == "wandb":
            self.lib = lib
            run = lib.init(project=os.environ.get("WANDB_PROJECT", "blocksearch"), dir=str(self.folder),
                           name=run_name, id=ids.get("wandb"), resume="allow", config=params)
            ids["wandb"] = run.id
        if tracker in ("mlflow", "wandb"):
            ids_path.write_text(json.dumps(ids) + "\n")

    def log(self, step: int, metrics: dict) -> None:
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
        if self.kind == "tensorboard":
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        elif self.kind == "mlflow":
            self.lib.log_metrics(values, step=step)
        elif self.kind == "wandb":
            self.lib.log(values, step=step)

    def close(self) -> None:
        if self.kind == "tensorboard":
            self.writer.close()
        elif self.kind == "mlflow":
            self.lib.end_run()
        elif self.kind == "wandb":
            self.lib.finish()


def open_tracker(tracker: str, folder: Path, start_step: int, params: dict, run_name: str) -> Tracker | None:
    """A Tracker, or None for ``none``."""
    return None if tracker == "none" else Tracker(tracker, folder, start_step, params, run_name)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out
