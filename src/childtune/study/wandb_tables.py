"""Upload the aggregated tables and figures to one wandb summary run.

    python -m childtune.study.wandb_tables                    # results/tables, results/figures
    python -m childtune.study.wandb_tables results_dir=R mode=online

Each results/tables/<study>.csv becomes the wandb Table `tables/<study>`, each
results/figures/<name>.png the Image `figures/<name>`. Offline unless WANDB_MODE or --mode says
otherwise (sync with `wandb sync <results_dir>/wandb/offline-run-*`). Reads files only: build
them first with `make reproduce-tables`."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from . import cli
from ..errors import UserError
from ..loggers import WANDB_MODES, start_run


def table_files(results_dir: str | Path) -> dict[str, Path]:
    """study -> its aggregated table (results/tables/<study>.csv), sorted by study."""
    return {p.stem: p for p in sorted((Path(results_dir) / "tables").glob("*.csv"))}


def figure_files(results_dir: str | Path) -> dict[str, Path]:
    """figure name -> results/figures/<name>.png, sorted by name."""
    return {p.stem: p for p in sorted((Path(results_dir) / "figures").glob("*.png"))}


def upload(results_dir: str | Path, project: str, mode: str, name: str | None = None) -> dict:
    """One run holding every table and figure; returns what it logged and where."""
    import pandas as pd
    import wandb

    tables, figures = table_files(results_dir), figure_files(results_dir)
    if not tables and not figures:
        raise UserError(f"no tables (*.csv) or figures (*.png) under {results_dir}/tables or "
                        f"{results_dir}/figures; build them first with `make reproduce-tables`")
    if mode not in WANDB_MODES:
        raise UserError(f"mode must be one of {', '.join(WANDB_MODES)}, got {mode!r}")
    run, mode = start_run(mode, project=project, name=name, job_type="summary",
                          tags=["summary", *tables], dir=str(results_dir),
                          config={"tables": list(tables), "figures": list(figures)})
    try:
        run.log({**{f"tables/{study}": wandb.Table(dataframe=pd.read_csv(path))
                    for study, path in tables.items()},
                 **{f"figures/{stem}": wandb.Image(str(path))
                    for stem, path in figures.items()}})
        info = {"id": run.id, "mode": mode, "dir": str(Path(run.dir).parent),
                "tables": list(tables), "figures": list(figures)}
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
    return info


OPTIONS = {
    "results_dir": ("results", "where tables/ and figures/ are read"),
    "project": ("childtune-tables", "the wandb project"),
    "name": ("", "the run's name (default: wandb's)"),
    "mode": ("", "offline | online | disabled (default: WANDB_MODE, else offline)"),
}


def main(argv: list[str] | None = None) -> None:
    try:
        args = cli.parse(sys.argv[1:] if argv is None else argv, __doc__, OPTIONS)[0]
        info = upload(args["results_dir"], args["project"],
                      args["mode"] or os.environ.get("WANDB_MODE") or "offline",
                      args["name"] or None)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"wandb run {info['id']} ({info['mode']}): {len(info['tables'])} tables, "
          f"{len(info['figures'])} figures -> {info['dir']}")


if __name__ == "__main__":
    main()
