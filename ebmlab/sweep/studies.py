"""Registered studies: a notebook and its default grid, run by ``ebmlab study NAME --out DIR``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ._common import SweepError, nearest


@dataclass(frozen=True)
class Study:
    """A registered study: paths relative to the notebooks folder (:func:`notebooks_dir`)."""

    notebook: str
    grid: str  # the default grid file, `ebmlab study NAME` runs it
    about: str


STUDIES: dict[str, Study] = {
    "quickstart": Study("00_quickstart.py", "grids/quickstart.yaml",
                        "train the default preset; samples, diagnostics, every sampler"),
    "quick-tuning": Study("00_quickstart.py", "grids/quick-tuning.yaml",
                          "why quick-mnist5k is set as it is: the tuned preset against one-change ablations"),
    "regularization": Study("01_regularization.py", "grids/regularization.yaml",
                            "spectral norm x L2 energy penalty x aggressive/careful: which settings diverge"),
    "sgd-sampling": Study("02_sgd_sampling.py", "grids/sgd-sampling.yaml",
                          "Langevin vs SGD with noise vs noise-free SGD, for training and for sampling"),
    "coopnets": Study("03_coopnets.py", "grids/coopnets.yaml",
                      "cooperative training of an EBM and a generator (CoopNets)"),
    "anatomy": Study("04_anatomy.py", "grids/anatomy.yaml",
                     "convergent vs non-convergent short-run MCMC learning (ebm-anatomy)"),
}


def notebooks_dir() -> Path:
    """The studies' notebooks: $EBMLAB_NOTEBOOKS, else the repository's notebooks/ beside the package."""
    candidates = [Path(os.environ["EBMLAB_NOTEBOOKS"])] if os.environ.get("EBMLAB_NOTEBOOKS") else []
    package = Path(__file__).resolve().parents[1]  # ebmlab/
    candidates += [package.parent / "notebooks", package / "notebooks"]
    for c in candidates:
        if c.is_dir():
            return c
    raise SweepError(f"no notebooks folder found (looked in {', '.join(map(str, candidates))}); studies run from a "
                     f"source checkout (git clone the repository and `pip install -e .`), or set EBMLAB_NOTEBOOKS")


def resolve_study(name: str) -> tuple[Path, Path]:
    """(notebook, default grid file) of a registered study; errors say which file is missing."""
    if name not in STUDIES:
        raise SweepError(f"unknown study {name!r}{nearest(name, STUDIES)} (studies: {', '.join(STUDIES)})")
    root = notebooks_dir()
    nb, grid = root / STUDIES[name].notebook, root / STUDIES[name].grid
    for path, what in ((nb, "notebook"), (grid, "default grid file")):
        if not path.is_file():
            raise SweepError(f"study {name!r}: its {what} {path} does not exist")
    return nb, grid
