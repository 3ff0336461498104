# Sourced by .ci/run and .ci/latest: a new virtual environment of its own on every run, so that nothing installed by
# hand on the machine (and nothing missing from pyproject.toml) can hide behind a green run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV_DIR="$(mktemp -d "${TMPDIR:-/tmp}/hf-layerprune-ci-XXXXXX")"
trap 'rm -rf "$VENV_DIR"' EXIT
"${PYTHON:-python3}" -m venv "$VENV_DIR/venv"
# shellcheck disable=SC1091
. "$VENV_DIR/venv/bin/activate"
python -m pip install --quiet --upgrade pip
if [ "${CI:-}" = "true" ]; then
  pip install --quiet torch==2.13.0   # the CPU wheel on the CI machine's disk; any other torch pulls GBs of CUDA
fi
