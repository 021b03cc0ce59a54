"""Google Colab helpers: detect Colab, choose the run folder, run ``colab_setup.sh``, the "Open in Colab" badge.

A notebook's first cell calls :func:`setup`; it returns at once outside Colab, so the same notebook runs
unchanged locally and under papermill. Importing this module does nothing.

Where runs go (:func:`run_root`): ``$EBMLAB_RUN_ROOT`` when set; else the folder ``colab_setup.sh --drive``
recorded in ``~/.ebmlab/run_root`` (a Google Drive folder, so runs and checkpoints survive a disconnect),
as long as it is reachable; else ``./runs``.

``colab_setup.sh`` also runs this file directly (``plan`` and ``mark``, see :func:`install_plan`) before
ebmlab is installed, so the module imports nothing from ebmlab and nothing outside the standard library at
the top.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

GITHUB_REPO = "ebmlab/ebmlab"  # owner/name on GitHub: badge links and the raw URL of the setup script
GITHUB_BRANCH = "main"
SETUP_SCRIPT = "colab_setup.sh"
DRIVE_MOUNT = "/content/drive"  # where Colab's drive.mount puts Google Drive; MyDrive/ lies inside

# Colab ships CUDA builds of these and its frontend speaks ipywidgets 7's protocol: letting pip replace
# them breaks the runtime (or forces a restart), so they are never installed, only reported when missing.
COLAB_OWNED = ("torch", "torchvision", "torchaudio", "ipywidgets")
# The kernel's own stack, pinned at the installed versions while pip resolves a missing dependency, so
# that pip fails loudly instead of upgrading what the running notebook depends on.
COLAB_PINNED = COLAB_OWNED + (
    "google-colab", "ipykernel", "ipython", "jupyter-client", "jupyter-core", "notebook",
    "tornado", "traitlets", "widgetsnbextension", "jupyterlab-widgets",
)


def in_colab() -> bool:
    """True inside a Google Colab runtime (its kernel, or a process it started, such as papermill's)."""
    if os.environ.get("COLAB_RELEASE_TAG"):
        return True
    if "google.colab" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):
        return False


def config_dir() -> Path:
    """Where colab_setup.sh leaves its records (``$EBMLAB_HOME``, default ``~/.ebmlab``)."""
    return Path(os.environ.get("EBMLAB_HOME") or Path.home() / ".ebmlab").expanduser()


def recorded_run_root() -> Path | None:
    """The run folder colab_setup.sh recorded (``<config_dir>/run_root``), or None."""
    try:
        text = (config_dir() / "run_root").read_text().strip()
    except OSError:
        return None
    return Path(text).expanduser() if text else None


def run_root() -> Path:
    """The folder that holds run folders: ``$EBMLAB_RUN_ROOT``, else the recorded Drive folder, else ./runs.

    A recorded folder that does not exist means Drive is not mounted (typically after a reconnect). The
    runs then go to ./runs with a warning rather than into a fresh directory under /content/drive, which
    would also make the next ``drive.mount`` fail on a non-empty mountpoint.
    """
    env = os.environ.get("EBMLAB_RUN_ROOT")
    if env:
        return Path(env).expanduser()
    local = Path.cwd() / "runs"
    recorded = recorded_run_root()
    if recorded is not None:
        if recorded.is_dir():
            return recorded
        warnings.warn(
            f"ebmlab: the recorded run folder {recorded} is not reachable (Google Drive not mounted?); "
            f"writing to {local} instead. Mount Drive again with ebmlab.colab.setup(drive=True) to resume "
            "the runs stored there.",
            stacklevel=2,
        )
    return local


def default_out_dir(name: str) -> Path:
    """The run folder a notebook or study called ``name`` writes to: ``run_root() / name`` (not created)."""
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(f"default_out_dir needs a relative folder name such as '01_quickstart', got {name!r}")
    return run_root() / name


def colab_url(notebook: str | Path) -> str:
    """Colab URL that opens ``notebooks/<name>.ipynb`` from GitHub; accepts a name, a .py or a .ipynb path."""
    stem = Path(notebook).name.removesuffix(".ipynb").removesuffix(".py")
    return f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/{GITHUB_BRANCH}/notebooks/{stem}.ipynb"


def colab_badge(notebook: str | Path) -> str:
    """Markdown for the "Open in Colab" badge linking to :func:`colab_url`."""
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook)})"


def setup_script_url() -> str:
    """Raw GitHub URL of colab_setup.sh, for a notebook opened on its own without a checkout."""
    return f"https://raw.githubusercontent.com/{GITHUB_REPO}/{GITHUB_BRANCH}/{SETUP_SCRIPT}"


def setup(drive: bool = False, script: str | Path | None = None) -> bool:
    """Run colab_setup.sh when in Colab (a notebook's first cell); return False and do nothing elsewhere.

    ``drive=True`` mounts Google Drive here, in the kernel (``drive.mount`` asks the browser for consent,
    which a subprocess cannot do), then lets the script record the Drive run folder. Colab's custom widget
    manager is enabled here for the same reason: it hooks the running kernel's display publisher.
    """
    if not in_colab():
        return False
    if drive:
        from google.colab import drive as gdrive

        gdrive.mount(DRIVE_MOUNT)
    path = Path(script) if script else _find_setup_script()
    cmd = ["bash", str(path)] + (["--drive"] if drive else [])
    # Piped and echoed line by line: Colab shows a cell's sys.stdout, not a child's file descriptors.
    env = {**os.environ, "PYTHON": sys.executable, "EBMLAB_DRIVE_MOUNT": DRIVE_MOUNT}
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
    if proc.returncode:
        raise RuntimeError(f"{path} failed with exit status {proc.returncode}; its messages are above.")
    try:
        from google.colab import output

        output.enable_custom_widget_manager()
    except Exception as exc:  # widgets still render through Colab's built-in ipywidgets 7 support
        print(f"[ebmlab] could not enable Colab's custom widget manager ({exc}); built-in widgets still work.")
    importlib.invalidate_caches()  # packages pip just added become importable without a restart
    return True


def _find_setup_script() -> Path:
    checkout = os.environ.get("EBMLAB_DIR", "/content/ebmlab")
    for d in (Path(__file__).resolve().parents[1], Path.cwd(), Path(checkout)):
        if (d / SETUP_SCRIPT).is_file():
            return d / SETUP_SCRIPT
    # ebmlab was installed without a checkout (pip install git+...): fetch the script itself.
    import urllib.request

    dest = config_dir() / SETUP_SCRIPT
    dest.parent.mkdir(parents=True, exist_ok=True)
    urllib.request.urlretrieve(setup_script_url(), dest)
    return dest


# --- install planning, run by colab_setup.sh as `python colab.py plan|mark REPO` -------------------------


def _load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pip carries a copy of the same parser
        from pip._vendor import tomli as tomllib
    with open(path, "rb") as f:
        return tomllib.load(f)


def _packaging():
    try:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name
    except ModuleNotFoundError:  # a bare interpreter still has pip's vendored copy
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.utils import canonicalize_name
    return Requirement, canonicalize_name


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def source_hash(repo: str | Path) -> str:
    """SHA-256 over pyproject.toml and the package files: a changed checkout needs a reinstall even when
    the version number did not move (a non-editable install copies the files)."""
    repo = Path(repo)
    files = [repo / "pyproject.toml"] + sorted(
        p for p in (repo / "ebmlab").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(repo).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _installed_from(repo: Path) -> bool:
    """ebmlab is installed editable from this very checkout, so its files are always current."""
    try:
        info = json.loads(importlib.metadata.distribution("ebmlab").read_text("direct_url.json") or "{}")
    except (importlib.metadata.PackageNotFoundError, json.JSONDecodeError):
        return False
    return bool(info.get("dir_info", {}).get("editable")) and info.get("url") == repo.resolve().as_uri()


def install_plan(repo: str | Path, extras: tuple[str, ...] = (), version_of=_installed_version) -> dict:
    """What colab_setup.sh must install for the checkout at ``repo``.

    Returns ``ebmlab`` (why ebmlab needs a (re)install, or None when the installed copy matches the
    checkout), ``install`` (requirements of ebmlab and of ``extras`` that are missing or too old, skipping
    :data:`COLAB_OWNED`), ``owned_missing`` (requirements among COLAB_OWNED that are not met: reported,
    never installed) and ``pins`` (``name==version`` constraints for the installed :data:`COLAB_PINNED`).
    ``version_of(name)`` gives an installed version or None (injected by tests).
    """
    Requirement, canon = _packaging()
    repo = Path(repo)
    project = _load_toml(repo / "pyproject.toml")["project"]
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    owned = {canon(n) for n in COLAB_OWNED}
    install, owned_missing = [], []
    for text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        have = version_of(req.name)
        if have is not None and req.specifier.contains(have, prereleases=True):
            continue
        spec = req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "") + str(req.specifier)
        (owned_missing if canon(req.name) in owned else install).append(spec)

    status = None
    have = version_of("ebmlab")
    if have is None:
        status = "not installed"
    elif have != project["version"]:
        status = f"installed {have}, checkout is {project['version']}"
    elif not _installed_from(repo):
        marker = _read_marker()
        if marker.get("source") != source_hash(repo) or marker.get("python") != sys.executable:
            status = "the checkout differs from the installed copy"
    pins = [f"{n}=={v}" for n in COLAB_PINNED if (v := version_of(n)) is not None]
    return {"ebmlab": status, "install": install, "owned_missing": owned_missing, "pins": pins}


def _read_marker() -> dict:
    try:
        return json.loads((config_dir() / "installed.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def mark_installed(repo: str | Path) -> None:
    """Record which checkout and interpreter the current install came from (read by install_plan)."""
    version = _load_toml(Path(repo) / "pyproject.toml")["project"]["version"]
    record = {"version": version, "source": source_hash(repo), "python": sys.executable}
    path = config_dir() / "installed.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def _main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("plan", "mark"):
        print("usage: python colab.py plan|mark REPO [EXTRA...]", file=sys.stderr)
        return 2
    if argv[0] == "mark":
        mark_installed(argv[1])
        return 0
    # One "key value" per line, read by colab_setup.sh; specs carry no spaces.
    plan = install_plan(argv[1], extras=tuple(argv[2:]))
    if plan["ebmlab"]:
        print("ebmlab", plan["ebmlab"])
    for key in ("install", "owned_missing", "pins"):
        for spec in plan[key]:
            print(key, spec)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
