#!/usr/bin/env bash
# Snakemake runs this in the new robuniv.yaml environment (activated), from the workflow's
# working directory: install robuniv itself, editable, from that checkout, so jobs run the
# checkout's code. Set ROBUNIV_SRC when the working directory is not the checkout
# (snakemake --directory ELSEWHERE).
set -euo pipefail
src=${ROBUNIV_SRC:-$PWD}
if ! grep -qs '^name = "robuniv"' "$src/pyproject.toml"; then
  echo "robuniv.post-deploy.sh: $src is not a robuniv checkout; set ROBUNIV_SRC to one" >&2
  exit 1
fi
python -m pip install --no-deps --editable "$src"
