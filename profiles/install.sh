#!/usr/bin/env bash
# Make `snakemake --profile slurm` find robuniv's SLURM profile: Snakemake looks up a
# bare profile name in ~/.config/snakemake/<name> (not in profiles/ beside the Snakefile).
#   profiles/install.sh            link it there (a symlink: edits here take effect)
#   profiles/install.sh --copy     copy it instead (to edit the copy for your cluster)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target_dir="${XDG_CONFIG_HOME:-$HOME/.config}/snakemake"
target="$target_dir/slurm"
mkdir -p "$target_dir"
if [ -e "$target" ] && [ ! -L "$target" ]; then
  echo "$target exists and is not robuniv's link; leaving it alone" >&2
  exit 1
fi
rm -f "$target"
if [ "${1:-}" = "--copy" ]; then
  cp -r "$here/slurm" "$target"
  echo "copied $here/slurm to $target"
else
  ln -s "$here/slurm" "$target"
  echo "linked $target -> $here/slurm"
fi
echo "now: snakemake --profile slurm [--configfile experiments/paper.yaml]"
