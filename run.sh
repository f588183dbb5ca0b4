#!/usr/bin/env bash
# robuniv from nothing: create the environment, fetch the default dataset, run.
#   ./run.sh [SNAKEMAKE ARGS...]   the default study (config.yaml) to its figures
#   ./run.sh test [PYTEST ARGS...] the test suite (what CI runs)
# Environment: ROBUNIV_VENV (default .venv), TORCH_PIP (the torch/torchvision pins).
set -euo pipefail
cd "$(dirname "$0")"

venv=${ROBUNIV_VENV:-.venv}
case "$(uname -m)" in
  # The CPU-usable builds NOTES.md pins for these machines; override with TORCH_PIP.
  aarch64 | arm64) default_torch="torch==2.9.1 torchvision==0.24.1" ;;
  *) default_torch="torch==2.14.1 torchvision==0.29.1" ;;
esac
torch_pip=${TORCH_PIP:-$default_torch}
data_root=resources/fashion_mnist

ensure_env() {
  if "$venv/bin/python" -c "import robuniv.pipeline, snakemake, pytest, playwright, timm, pyautoattack" 2>/dev/null; then
    return
  fi
  echo "== creating the environment in $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  # shellcheck disable=SC2086 # two requirement words
  "$venv/bin/pip" install --quiet $torch_pip
  "$venv/bin/pip" install --quiet -e ".[workflow,dev,zoo]"
}

ensure_data() {
  if "$venv/bin/python" -m robuniv.data check fashion_mnist "$data_root" >/dev/null 2>&1; then
    return
  fi
  # Debian ships the full Fashion-MNIST (offline); elsewhere torchvision downloads it.
  if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null \
    && [ "$(id -u)" = 0 ]; then
    echo "== installing Debian's dataset-fashion-mnist"
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
      || echo "   apt failed; torchvision will download the data instead"
  fi
  "$venv/bin/python" -m robuniv.data fetch fashion_mnist "$data_root"
}

command=${1:-run}
case "$command" in
  test)
    shift
    ensure_env
    ensure_data
    exec "$venv/bin/pytest" -q tests "$@"
    ;;
  run)
    [ $# -gt 0 ] && shift
    ;&
  *)
    ensure_env
    ensure_data
    exec "$venv/bin/snakemake" --cores all "$@"
    ;;
esac
