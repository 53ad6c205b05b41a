"""optuna-dashboard shows each trial's pictures: its sample row (under the teacher's) and its block diagram,
uploaded as Optuna artifacts (``optuna.artifacts.upload_artifact``) to a ``FileSystemArtifactStore`` beside the
study: ``<runs-dir>/artifacts`` (the folder of a SQLite study's file, else of its students). The report step
uploads them, never the Ray trial, so they belong to the study, named ``trial<N>-samples.png`` and
``trial<N>-diagram.png``: Optuna refuses a finished trial's attributes (``UpdateFinishedTrialError``), and an
artifact's record is one. A picture the study already holds (by file name) is not uploaded again.
See them with ``optuna-dashboard <storage> --artifact-dir <runs-dir>/artifacts`` (the study's Artifacts tab)."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact

from blocksearch.report.compute import ParetoReport
from blocksearch.report.pictures import Pictures

ARTIFACTS_DIR = "artifacts"
SQLITE = "sqlite:///"


def artifact_dir(report: ParetoReport) -> Path | None:
    """The study's artifact store: beside a SQLite storage file, else beside the students' folders
    (``<runs-dir>/<study>/students/<genome>/<denoiser>``); None where neither is known."""
    if (report.storage or "").startswith(SQLITE):
        return Path(report.storage[len(SQLITE):]).parent / ARTIFACTS_DIR
    found = next((t.student_dir for t in report.trials if t.student_dir), None)
    return Path(found).parents[3] / ARTIFACTS_DIR if found else None


def dashboard_command(report: ParetoReport) -> str | None:
    """The command that shows the study with its pictures."""
    store = artifact_dir(report)
    return f"optuna-dashboard {report.storage} --artifact-dir {store}" if store and report.storage else None


def upload_pictures(report: ParetoReport, pictures: Pictures, folder: Path,
                    store_dir: Path | None = None) -> dict[int, list[str]]:
    """Upload each trial's row and diagram (files under ``folder``) to the study; trial -> the artifact ids
    uploaded now."""
    store_dir = store_dir or artifact_dir(report)
    files: dict[int, list[Path]] = {}
    for kind in (pictures.rows, pictures.diagrams):
        for n, rel in kind.items():
            files.setdefault(n, []).append(folder / rel)
    if not files or store_dir is None or not report.storage:
        return {}
    store_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(store_dir))
    storage = optuna.storages.get_storage(report.storage)
    study = optuna.load_study(study_name=report.study, storage=storage)
    out: dict[int, list[str]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        have = {m.filename for m in get_all_artifact_meta(study)}
        for n, paths in files.items():
            for path in paths:
                if path.name not in have:
                    out.setdefault(n, []).append(upload_artifact(artifact_store=store, file_path=str(path),
                                                                 study_or_trial=study, mimetype="image/png"))
    return out
