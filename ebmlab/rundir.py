"""The run folder contract (DESIGN.md): atomic files, the metrics stream, checkpoints.

    RUN/config.json      resolved config
    RUN/metrics.jsonl    one JSON object per logged iteration
    RUN/summary.json     status (completed | diverged | failed | running), iterations, wall seconds, final metrics
    RUN/samples/         PNG grids
    RUN/checkpoints/last.pt

Every file is written to a temporary name and renamed, so a kill at any moment leaves the previous
version readable. Checkpoints load with ``weights_only=True``: loading never runs code.

Only the checkpoint functions import torch: the JSON and atomic-write helpers serve torch-free callers
too (``ebmlab.sweep`` and its cluster jobs, ``ebmlab --help``), which should not pay seconds of torch import.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

STATUSES = ("completed", "diverged", "failed", "running")


class RunFolderError(FileExistsError):
    """The run folder exists and neither resume nor overwrite was asked for."""


def _jsonable(v):
    # Tensors are recognised by duck typing, so writing JSON never imports torch.
    if hasattr(v, "numel") and hasattr(v, "tolist"):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them readable
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; files written here get the permissions a plain
# open() would give, so a run folder on a shared (cluster) filesystem stays readable by the user's group.
_FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # POSIX
            os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, obj, *, sort_keys: bool = True, default=None) -> None:
    """Atomically write `obj` as indented JSON. ``sort_keys=False`` keeps the caller's key order where it
    means something (a sweep's grid axes); ``default`` converts values JSON lacks (``str`` for dates)."""
    text = json.dumps(_jsonable(obj), indent=2, sort_keys=sort_keys, default=default) + "\n"
    atomic_write_bytes(path, text.encode())


def read_json(path):
    with open(path) as f:
        return json.load(f)


def append_jsonl(path, obj) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(_jsonable(obj)) + "\n")


def read_jsonl(path) -> list[dict]:
    """Records of a JSONL file; a torn last line (kill mid-write) is skipped."""
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def truncate_jsonl(path, max_iteration: int) -> None:
    """Drop records logged after `max_iteration` (they belong to work lost since the last checkpoint)."""
    recs = [r for r in read_jsonl(path) if r.get("iteration", -1) <= max_iteration]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in recs).encode())


def save_checkpoint(path, state: dict) -> None:
    """torch.save to a temporary file, then rename (atomic)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _FILE_MODE)
        os.close(fd)
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path, map_location="cpu") -> dict:
    import torch

    return torch.load(path, map_location=map_location, weights_only=True)


def resume_args(path) -> dict[str, bool]:
    """``train(cfg, path, **resume_args(path))``: continue from ``path/checkpoints/last.pt`` when it exists,
    else start afresh, replacing what an attempt killed before its first checkpoint left there.

    This makes a notebook idempotent: executed again in the same ``out_dir`` (a sweep retrying a run, a
    cluster job requeued after preemption), it resumes its training instead of starting over or refusing
    the non-empty folder.
    """
    has_checkpoint = RunDir(path).checkpoint.exists()
    return {"resume": has_checkpoint, "overwrite": not has_checkpoint}


class RunDir:
    """Paths of one run folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    config = property(lambda self: self.root / "config.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    summary = property(lambda self: self.root / "summary.json")
    samples = property(lambda self: self.root / "samples")
    checkpoint = property(lambda self: self.root / "checkpoints" / "last.pt")

    def exists(self) -> bool:
        return self.root.exists() and any(self.root.iterdir())

    def prepare(self, resume: bool = False, overwrite: bool = False) -> None:
        """Create the folder; refuse to touch an existing run unless resume or overwrite."""
        if resume and overwrite:
            raise ValueError("choose either resume or overwrite, not both")
        if self.exists():
            if overwrite:
                shutil.rmtree(self.root)
            elif not resume:
                raise RunFolderError(
                    f"{self.root} already holds a run; pass --resume to continue it or --overwrite to "
                    f"replace it (or choose another --out)")
        elif resume:
            raise FileNotFoundError(f"--resume: no run to resume in {self.root}")
        self.root.mkdir(parents=True, exist_ok=True)
        self.samples.mkdir(exist_ok=True)

    def read_summary(self) -> dict | None:
        return read_json(self.summary) if self.summary.exists() else None
