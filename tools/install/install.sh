#!/usr/bin/env bash
# `make install`: create (or reuse) the project-local virtual environment and install the
# OpenMMLab stack, DiffDRR, pylidc and this project (editable) into it.
#
#   VENV=.venv      where the environment lives
#   PYTHON=python3  the interpreter that creates it
#
# * torch: an installed torch is kept. A new venv reuses the base interpreter's torch
#   (--system-site-packages) when it has one, otherwise torch==2.13.0 is installed. Every
#   pip call runs under a constraints file that pins that exact torch, so nothing replaces
#   it or pulls CUDA wheels as a side effect.
# * mmcv 2.1.0 needs its compiled ops. pip takes a wheel where its find-links offer one
#   (CI prepends ../shared/wheelhouse to PIP_FIND_LINKS); otherwise it builds the sdist
#   (--no-build-isolation, so the build sees our torch; about 20 min on 2 cores).
# * CUDA ops: when torch has CUDA (torch.version.cuda) and an nvcc of the same major
#   version is found ($CUDA_HOME/bin/nvcc, PATH, /usr/local/cuda), mmcv's ops are built
#   with CUDA (FORCE_CUDA=1, also on a build machine without a GPU), and an mmcv without
#   CUDA kernels is rebuilt from source. A CUDA torch without such an nvcc gets CPU ops
#   and a warning saying how to fix it. check_install.py --ops-plan decides and says why.
# * Idempotent: a second run on an installed tree checks the imports and stops.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
here=tools/install
log() { printf '[install] %s\n' "$*"; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null || die "no interpreter '$PYTHON' (set PYTHON=...)"
if [ ! -x "$VENV/bin/python" ]; then
    if "$PYTHON" -c 'import torch' 2>/dev/null; then
        log "creating $VENV, reusing the torch of $PYTHON"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        log "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
fi
py="$VENV/bin/python"

# Fast path: nothing that drives the install changed and the stack imports.
stamp="$VENV/.mv2d-xray-install"
want=$(cat "$here"/*.txt "$here"/*.sh "$here"/*.py setup.py | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$py" "$here/check_install.py" --quiet; then
    log "already installed in $VENV (torch $("$py" -c 'import torch; print(torch.__version__)'))"
    exit 0
fi

if "$py" -c 'import torch' 2>/dev/null; then
    torch_version=$("$py" -c 'import torch; print(torch.__version__)')
    log "keeping torch $torch_version"
else
    log "installing torch==2.13.0"
    "$py" -m pip install --disable-pip-version-check torch==2.13.0
    torch_version=$("$py" -c 'import torch; print(torch.__version__)')
fi
constraints="$VENV/constraints.txt"
{ cat "$here/constraints.txt"; echo "torch==$torch_version"; } > "$constraints"
pip_install() { "$py" -m pip install --disable-pip-version-check -c "$constraints" "$@"; }

log "build prerequisites"
pip_install 'setuptools<82' wheel ninja
log "dependencies (tools/install/requirements.txt)"
pip_install -r "$here/requirements.txt"
log "packages whose declared dependencies are not needed (tools/install/no-deps.txt)"
pip_install --no-deps -r "$here/no-deps.txt"

mmcv_version=2.1.0
plan=$("$py" "$here/check_install.py" --ops-plan) || exit 2  # its error line says why
ops=${plan%% *}
log "mmcv's ops: ${plan#* }"
if [ "$ops" = cuda ]; then
    # mmcv's setup.py compiles the CUDA kernels when torch sees a GPU or FORCE_CUDA=1
    export FORCE_CUDA=1
fi
mmcv_ok() { "$py" "$here/check_install.py" --mmcv-fits "$ops" --mmcv-version "$mmcv_version"; }
if ! mmcv_ok 2>/dev/null; then
    log "mmcv $mmcv_version, $ops ops (a wheel from find-links if one fits, else a source build)"
    # --no-deps: its requirements are in requirements.txt; resolving them again would pull
    # mmengine's `opencv-python`, which overwrites `opencv-python-headless`'s cv2.
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} pip_install --no-build-isolation --no-deps \
        "mmcv==$mmcv_version"
    if ! why=$(mmcv_ok 2>&1); then
        # A wheel built against another torch ABI installs but fails to load its ops; a
        # wheel (or an mmcv already installed) without CUDA kernels does not fit `cuda`.
        log "that mmcv does not fit ($why): building it from source"
        MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} pip_install --no-build-isolation \
            --no-binary mmcv --no-deps --force-reinstall --no-cache-dir "mmcv==$mmcv_version"
    fi
fi

log "this project (editable)"
pip_install --no-deps --no-build-isolation -e .

"$py" "$here/check_install.py"
echo "$want" > "$stamp"
log "done: activate with 'source $VENV/bin/activate'"
