#!/usr/bin/env bash
# Set up ebmlab in a Google Colab runtime (works on any Linux machine with Python >= 3.10 too).
#
# From a notebook cell, in a checkout or with the notebook opened on its own:
#   !bash colab_setup.sh [--drive]
#   !curl -fsSL https://raw.githubusercontent.com/ebmlab/ebmlab/main/colab_setup.sh | bash -s -- --drive
# or, when ebmlab is already importable, `ebmlab.colab.setup(drive=True)`, which also mounts Drive and
# enables Colab's widget manager in the kernel (neither can be done from a shell script).
#
# What it does, each step skipped when already done (a second run reports nothing new to do):
#   1. finds the ebmlab checkout this script sits in, or clones $EBMLAB_REPO into $EBMLAB_DIR;
#   2. installs ebmlab non-editable with --no-deps, plus only the requirements that are missing or too
#      old; Colab's torch, torchvision, torchaudio and ipywidgets are never handed to pip and the kernel's
#      own packages are pinned, so no runtime restart is needed;
#   3. prints the GPU it found, or how to switch the runtime to one;
#   4. with --drive, records a Google Drive folder as the run folder (read by ebmlab.colab.run_root()),
#      so runs and checkpoints survive a disconnect.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bash colab_setup.sh [--drive] [--skip-install] [--dry-run] [--update] [-h|--help]

  --drive         keep runs on Google Drive (env EBMLAB_DRIVE=1); Drive must be mounted first
  --skip-install  do not run pip (env EBMLAB_SKIP_INSTALL=1)
  --dry-run       say what would change, change nothing (env EBMLAB_DRY_RUN=1)
  --update        git pull --ff-only an existing checkout before installing (env EBMLAB_UPDATE=1)

environment:
  EBMLAB_REPO          git URL to clone when not run from a checkout (https://github.com/ebmlab/ebmlab)
  EBMLAB_REF           branch or tag to clone (main)
  EBMLAB_DIR           where to clone (/content/ebmlab)
  EBMLAB_EXTRAS        optional-dependency groups to install too, space separated (none)
  EBMLAB_DRIVE_MOUNT   where Google Drive is mounted (/content/drive)
  EBMLAB_DRIVE_FOLDER  run folder inside MyDrive (ebmlab_runs)
  EBMLAB_HOME          where the records live (~/.ebmlab)
  PYTHON               interpreter to install into (python3: the Colab kernel's)
EOF
}

say() { printf '[ebmlab] %s\n' "$*"; }
warn() { printf '[ebmlab] WARNING: %s\n' "$*" >&2; }
die() {
    printf '[ebmlab] ERROR: %s\n' "$*" >&2
    exit 1
}
is_true() { case "${1:-}" in 1 | [Tt]rue | TRUE | [Yy]es | on) return 0 ;; *) return 1 ;; esac }
on_error() {
    local rc=$?
    printf '[ebmlab] ERROR: setup stopped at line %s (exit status %s); see the messages above.\n' "$1" "$rc" >&2
}
trap 'on_error $LINENO' ERR

EBMLAB_REPO=${EBMLAB_REPO:-https://github.com/ebmlab/ebmlab}
EBMLAB_REF=${EBMLAB_REF:-main}
EBMLAB_DIR=${EBMLAB_DIR:-/content/ebmlab}
EBMLAB_EXTRAS=${EBMLAB_EXTRAS:-}
EBMLAB_DRIVE_MOUNT=${EBMLAB_DRIVE_MOUNT:-/content/drive}
EBMLAB_DRIVE_FOLDER=${EBMLAB_DRIVE_FOLDER:-ebmlab_runs}
EBMLAB_HOME=${EBMLAB_HOME:-$HOME/.ebmlab}
want_drive=0 skip_install=0 dry_run=0 update=0
is_true "${EBMLAB_DRIVE:-}" && want_drive=1
is_true "${EBMLAB_SKIP_INSTALL:-}" && skip_install=1
is_true "${EBMLAB_DRY_RUN:-}" && dry_run=1
is_true "${EBMLAB_UPDATE:-}" && update=1
while (($#)); do
    case "$1" in
    --drive) want_drive=1 ;;
    --skip-install) skip_install=1 ;;
    --dry-run) dry_run=1 ;;
    --update) update=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        die "unknown option: $1"
        ;;
    esac
    shift
done

# Everything that changes the machine goes through here, so a dry run shows the same steps.
changes=()
changed() { changes+=("$1"); }
run() {
    if ((dry_run)); then
        say "would run: $*"
    else
        "$@"
    fi
}

# --- interpreter and runtime -------------------------------------------------------------------------
if [[ -z ${PYTHON:-} ]]; then
    PYTHON=$(command -v python3 || command -v python || true)
fi
[[ -n $PYTHON ]] || die "no python3 on PATH; set PYTHON=/path/to/python"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "ebmlab needs Python >= 3.10; $PYTHON is $("$PYTHON" -V 2>&1)"
# Absolute, so it survives the `cd /` below and matches the interpreter recorded with the install.
PYTHON=$("$PYTHON" -c 'import sys; print(sys.executable)')
in_colab=0
if [[ -n ${COLAB_RELEASE_TAG:-} ]] ||
    "$PYTHON" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("google.colab") is None)' 2>/dev/null; then
    in_colab=1
fi
((dry_run)) && say "Dry run: nothing will be changed."
where="this machine"
((in_colab)) && where="a Google Colab runtime"
say "Python: $PYTHON ($("$PYTHON" -V 2>&1)) on $where"

# --- 1. the checkout -----------------------------------------------------------------------------------
is_checkout() {
    [[ -f "$1/pyproject.toml" && -f "$1/ebmlab/__init__.py" ]] && grep -q '^name = "ebmlab"' "$1/pyproject.toml"
}
script_dir=""
src=${BASH_SOURCE[0]:-}
# Piped through `curl | bash` there is no script file, hence no checkout around it.
[[ -n $src && -f $src ]] && script_dir=$(cd "$(dirname "$src")" && pwd)
repo=""
for d in "$script_dir" "$PWD" "$EBMLAB_DIR"; do
    if [[ -n $d ]] && is_checkout "$d"; then
        repo=$(cd "$d" && pwd)
        break
    fi
done
if [[ -n $repo ]]; then
    say "Checkout: $repo"
    if ((update)) && [[ -d $repo/.git ]]; then
        before=$(git -C "$repo" rev-parse HEAD)
        run git -C "$repo" pull --ff-only --quiet
        [[ $(git -C "$repo" rev-parse HEAD) == "$before" ]] || changed "updated the checkout in $repo"
    fi
else
    command -v git >/dev/null || die "git is needed to fetch ebmlab (apt-get install git), or run this script from a checkout"
    if [[ -e $EBMLAB_DIR ]] && [[ -n $(ls -A "$EBMLAB_DIR" 2>/dev/null) ]]; then
        die "$EBMLAB_DIR exists but is not an ebmlab checkout; remove it or set EBMLAB_DIR to another folder"
    fi
    say "Cloning $EBMLAB_REPO ($EBMLAB_REF) into $EBMLAB_DIR ..."
    run git clone --quiet --depth 1 --branch "$EBMLAB_REF" "$EBMLAB_REPO" "$EBMLAB_DIR"
    changed "cloned $EBMLAB_REPO into $EBMLAB_DIR"
    ((dry_run)) || repo=$(cd "$EBMLAB_DIR" && pwd)
fi

# --- 2. install ----------------------------------------------------------------------------------------
pip_install() {
    run env PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 "$PYTHON" -m pip install --quiet "$@"
}
# Run from / so neither the checkout nor an egg-info left in the working directory passes for the install.
in_root() { (cd / && "$@"); }
# One temporary folder for the run, made on first use and removed on exit.
workdir=""
make_workdir() {
    if [[ -z $workdir ]]; then
        workdir=$(mktemp -d)
        trap 'rm -rf "$workdir"' EXIT
    fi
}
stage_source() {
    local f
    mkdir -p "$1"
    for f in pyproject.toml setup.py setup.cfg MANIFEST.in README.md LICENSE; do
        if [[ -e $repo/$f ]]; then cp "$repo/$f" "$1/"; fi
    done
    cp -R "$repo/ebmlab" "$1/ebmlab"
    find "$1/ebmlab" -name __pycache__ -type d -prune -exec rm -rf {} +
}
# ebmlab/colab.py run as a file (`python colab.py plan|mark REPO`): ebmlab may not be importable yet.
colab_py() {
    in_root "$PYTHON" -c 'import runpy, sys; sys.argv.pop(0); runpy.run_path(sys.argv[0], run_name="__main__")' \
        "$repo/ebmlab/colab.py" "$@"
}

if ((skip_install)); then
    say "Install: skipped (--skip-install / EBMLAB_SKIP_INSTALL)."
elif [[ -z $repo ]]; then
    say "Install: would install ebmlab and its missing requirements from the clone."
else
    # ebmlab/colab.py decides (install_plan): requirements read from pyproject.toml are compared with the
    # installed distributions' versions, and ebmlab itself with a record of the checkout last installed.
    # shellcheck disable=SC2086  # EBMLAB_EXTRAS is a space-separated list
    plan=$(colab_py plan "$repo" $EBMLAB_EXTRAS) ||
        die "could not work out what to install from $repo/pyproject.toml (messages above)"
    ebmlab_reason="" install=() owned_missing=() pins=()
    while read -r key value; do
        case "$key" in
        ebmlab) ebmlab_reason=$value ;;
        install) install+=("$value") ;;
        owned_missing) owned_missing+=("$value") ;;
        pins) pins+=("$value") ;;
        esac
    done <<<"$plan"

    for spec in ${owned_missing[@]+"${owned_missing[@]}"}; do
        if ((in_colab)); then
            warn "ebmlab needs $spec, which this Colab runtime lacks; it is left alone (reinstalling it breaks the runtime). Try Runtime > Change runtime type with the latest runtime version."
        else
            warn "ebmlab needs $spec and it is missing or older; install it yourself (for torch see https://pytorch.org/get-started/locally/)."
        fi
    done
    if ((${#install[@]})); then
        say "Installing what this runtime lacks: ${install[*]}"
        make_workdir
        constraints="$workdir/constraints.txt"
        printf '%s\n' ${pins[@]+"${pins[@]}"} >"$constraints"
        # The constraints pin the kernel's own packages: pip stops with a conflict rather than replacing them.
        pip_install -c "$constraints" "${install[@]}" ||
            die "pip could not install ${install[*]} without changing the runtime's own packages (${pins[*]:-none}); see pip's message above."
        changed "installed ${install[*]}"
    fi
    if [[ -n $ebmlab_reason ]]; then
        say "Installing ebmlab from $repo ($ebmlab_reason) ..."
        # Non-editable: the kernel imports a plain copy, so nothing needs a restart to see it.
        # A build inside the checkout reuses its build/lib, where modules deleted since the last build
        # linger and end up installed; building a fresh copy of what setuptools reads avoids that.
        make_workdir
        staged="$workdir/src"
        ((dry_run)) || stage_source "$staged"
        pip_install --no-deps "$staged"
        run colab_py mark "$repo"
        changed "installed ebmlab from $repo"
    fi
    if ((dry_run)); then
        :
    elif ! version=$(in_root "$PYTHON" -c 'import ebmlab; print(ebmlab.__version__, "from", ebmlab.__file__)' 2>&1); then
        die "ebmlab does not import after installing: $version"
    elif [[ -z $ebmlab_reason && ${#install[@]} -eq 0 ]]; then
        say "Install: ebmlab $version and its requirements are already installed; nothing to install."
    else
        say "Install: ebmlab $version"
    fi
fi

# --- widgets -------------------------------------------------------------------------------------------
if ((in_colab)); then
    say "Widgets: Colab renders ipywidgets sliders as they are. The custom widget manager hooks the running kernel, so it is enabled by ebmlab.colab.setup() or in a cell: from google.colab import output; output.enable_custom_widget_manager()"
fi

# --- 3. GPU --------------------------------------------------------------------------------------------
gpu=""
if command -v nvidia-smi >/dev/null 2>&1; then
    gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)
fi
if [[ -z $gpu ]]; then
    # Without nvidia-smi torch is the only witness (a container that hides the tool).
    gpu=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null || true)
fi
if [[ -n $gpu ]]; then
    say "GPU: $gpu"
elif ((in_colab)); then
    warn "this runtime has no GPU: training will run on the CPU, far slower than the presets assume. Switch with Runtime > Change runtime type > Hardware accelerator: GPU (e.g. T4) > Save; the runtime restarts, so run this cell again."
else
    warn "no NVIDIA GPU found: ebmlab will run on the CPU (the quick-* presets are sized for that)."
fi

# --- 4. run folder -------------------------------------------------------------------------------------
record="$EBMLAB_HOME/run_root"
if ((want_drive)); then
    # drive.mount asks the browser for consent through the kernel, which a shell script cannot reach;
    # and creating folders under an unmounted mountpoint would make the later mount fail.
    mydrive="$EBMLAB_DRIVE_MOUNT/MyDrive"
    if [[ -d $mydrive ]]; then
        root="$mydrive/$EBMLAB_DRIVE_FOLDER"
        if [[ ! -d $root ]]; then
            run mkdir -p "$root"
            changed "created $root"
        fi
        if [[ -f $record && "$(<"$record")" == "$root" ]]; then
            say "Run folder: $root (Google Drive, already recorded in $record)"
        else
            if ((dry_run)); then
                say "would record $root in $record"
            else
                mkdir -p "$EBMLAB_HOME"
                printf '%s\n' "$root" >"$record.tmp"
                mv -f "$record.tmp" "$record"
            fi
            changed "recorded the run folder $root in $record"
            say "Run folder: $root (Google Drive)"
        fi
    else
        warn "Google Drive is not mounted at $EBMLAB_DRIVE_MOUNT. Mount it in a notebook cell: from google.colab import drive; drive.mount('$EBMLAB_DRIVE_MOUNT') (or call ebmlab.colab.setup(drive=True)), then run this again with --drive. Until then runs go to ./runs, which is lost when the runtime is recycled."
    fi
elif [[ -n ${EBMLAB_RUN_ROOT:-} ]]; then
    say "Run folder: $EBMLAB_RUN_ROOT (EBMLAB_RUN_ROOT)"
elif [[ -f $record ]]; then
    say "Run folder: $(<"$record") (recorded in $record)"
else
    say "Run folder: ./runs next to the notebook (add --drive to keep runs on Google Drive across disconnects)"
fi

# --- summary -------------------------------------------------------------------------------------------
if ((${#changes[@]} == 0)); then
    say "Nothing new to do: ebmlab is already set up."
elif ((dry_run)); then
    say "Dry run: a real run would make ${#changes[@]} change(s):"
    printf '[ebmlab]   - %s\n' "${changes[@]}"
else
    say "Done, ${#changes[@]} change(s):"
    printf '[ebmlab]   - %s\n' "${changes[@]}"
fi
