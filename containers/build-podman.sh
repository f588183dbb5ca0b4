#!/usr/bin/env bash
# The robuniv image with podman on a machine that reaches PyPI and a Debian mirror but no
# container registry: bootstrap a Debian base image with debootstrap (once), build
# containers/Dockerfile on it with the host's pip configuration and local wheels, then run the
# test suite inside the image without network.
#   containers/build-podman.sh [all|base|build|test|workflow]   (default: all; steps are timed)
# workflow: the smoke study (tests/workflow/config.smoke.yaml) through the host's
# `snakemake --sdm apptainer`, every job in the image (tests/containers/apptainer-via-podman
# stands in for apptainer, which Debian does not ship); needs ./run.sh's .venv.
# Needs root and Debian's `podman runc debootstrap` (apt-get install -y podman runc debootstrap).
# Environment (defaults in brackets):
#   IMAGE [localhost/robuniv:$VARIANT]   BASE_IMAGE [localhost/robuniv-base:$SUITE]
#   VARIANT [cpu]   TORCH_INDEX [pypi: torch as ./run.sh gets it, through the host's pip config;
#   auto would take the CPU build from download.pytorch.org]   TORCH_PIP [./run.sh's pins]
#   SUITE [bookworm]   DEBIAN_MIRROR [http://deb.debian.org/debian]
#   CA_BUNDLE [/etc/ssl/certs/ca-certificates.crt] (pip inside the build trusts it)
#   PYTEST_ARGS [-q tests]   PYTHON [python3] (reads the host's pip configuration)
set -euo pipefail
cd "$(dirname "$0")/.."

variant=${VARIANT:-cpu}
suite=${SUITE:-bookworm}
image=${IMAGE:-localhost/robuniv:$variant}
base_image=${BASE_IMAGE:-localhost/robuniv-base:$suite}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
python=${PYTHON:-python3}
read -r -a pytest_args <<<"${PYTEST_ARGS:--q tests}"
# runc, not crun (crun fails here); a bounded ulimit (the host's is too large for some tools).
podman=(podman --runtime runc)
limits=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096)

tmpdirs=()
trap 'rm -rf "${tmpdirs[@]}"' EXIT

# timed NAME FUNCTION...: run, print how long it took and how it ended, pass the status on.
# (errexit is off inside FUNCTION here, so the steps end with `|| return` where it matters.)
timed() {
  local name=$1 start=$SECONDS status=0
  shift
  "$@" || status=$?
  echo "== $name: $((SECONDS - start)) s, exit status $status"
  return "$status"
}

bootstrap_base() {
  if "${podman[@]}" image exists "$base_image"; then
    echo "   base image $base_image exists (podman rmi it to bootstrap again)"
    return
  fi
  local rootfs
  rootfs=$(mktemp -d /var/tmp/robuniv-rootfs.XXXXXX)
  tmpdirs+=("$rootfs" "$rootfs.log")
  echo "   debootstrap $suite from $mirror into $rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log"; return 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar --numeric-owner -C "$rootfs" -c . \
    | "${podman[@]}" import --change 'CMD ["/bin/bash"]' - "$base_image" || return
}

# The host's index options as a pip.conf for the build, and the local folders they name
# (mounted read-only at the same paths): the torch wheels come from local disk, not the network.
write_pip_conf() { # write_pip_conf DIR: DIR/pip.conf, DIR/ca.crt; prints the folders to mount
  "$python" - "$1" <<'EOF'
import re, subprocess, sys
from pathlib import Path

out = Path(sys.argv[1])
listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                         capture_output=True, text=True, check=True).stdout
values: dict[str, list[str]] = {}
for line in listing.splitlines():
    m = re.match(r"^(?::env:|global|install)\.(index-url|extra-index-url|find-links)='(.*)'$", line)
    if m:
        words = values.setdefault(m[1], [])
        words += [w for w in m[2].split() if w not in words]
lines = ["[global]", "cert = /run/robuniv-build/ca.crt"]
mounts = set()
for key, words in values.items():
    if key == "index-url":
        words = words[:1]
    lines.append(f"{key} = {' '.join(words)}")
    for word in words:
        path = word.removeprefix("file://")
        if path.startswith("/"):  # a file:// index links to ../../files: mount its parent
            mounts.add(str(Path(path).parent) if key.endswith("index-url") else path)
(out / "pip.conf").write_text("\n".join(lines) + "\n")
print("\n".join(sorted(mounts)))
EOF
}

build_image() {
  local conf
  conf=$(mktemp -d /var/tmp/robuniv-pip.XXXXXX)
  tmpdirs+=("$conf")
  cp "$ca_bundle" "$conf/ca.crt" || return
  local mounts=(-v "$conf:/run/robuniv-build:ro")
  local dir
  while read -r dir; do
    [ -n "$dir" ] && [ -d "$dir" ] && mounts+=(-v "$dir:$dir:ro")
  done < <(write_pip_conf "$conf")
  echo "   pip configuration of the build:" && sed 's/^/   /' "$conf/pip.conf"
  local args=(--build-arg "VARIANT=$variant" --build-arg "BASE_IMAGE=$base_image"
    --build-arg "TORCH_INDEX=${TORCH_INDEX:-pypi}"
    --build-arg "PIP_CONFIG_FILE=/run/robuniv-build/pip.conf")
  [ -n "${TORCH_PIP:-}" ] && args+=(--build-arg "TORCH_PIP=$TORCH_PIP")
  "${podman[@]}" build --network host "${limits[@]}" "${mounts[@]}" "${args[@]}" \
    -f containers/Dockerfile -t "$image" . || return
  "${podman[@]}" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$image"
}

# The test suite inside the image, no network: Fashion-MNIST from Debian's package and the
# foolbox wheel (the ImageFolder tests' images) from the host, both read-only.
test_image() {
  local mounts=()
  local fmnist=/usr/share/datasets/fashion-mnist
  if [ -d "$fmnist" ]; then
    mounts+=(-v "$fmnist:$fmnist:ro")
  else
    echo "   $fmnist missing (apt-get install dataset-fashion-mnist): workflow tests will fail"
  fi
  local cache=${XDG_CACHE_HOME:-$HOME/.cache}/robuniv-test-data
  if [ ! -f "$cache/foolbox-3.3.4-py3-none-any.whl" ]; then
    "$python" -m pip download --quiet foolbox==3.3.4 --no-deps --only-binary=:all: -d "$cache" \
      || echo "   no foolbox wheel: its tests will skip"
  fi
  [ -d "$cache" ] && mounts+=(-v "$cache:/root/.cache/robuniv-test-data:ro")
  "${podman[@]}" run --rm --network none "${limits[@]}" "${mounts[@]}" -w /opt/robuniv \
    "$image" bash -c 'set -e; python -m robuniv.data fetch fashion_mnist resources/fashion_mnist
      exec pytest "$@"' pytest "${pytest_args[@]}"
}

# The smoke study with `snakemake --sdm apptainer` on the host, each job in the image.
workflow_in_image() {
  local work bin
  work=$(mktemp -d /var/tmp/robuniv-sdm.XXXXXX)
  bin=$(mktemp -d /var/tmp/robuniv-bin.XXXXXX)
  tmpdirs+=("$work" "$bin")
  ln -s "$PWD/tests/containers/apptainer-via-podman" "$bin/apptainer"
  # Apptainer binds the working directory: the data goes inside it, as on a cluster.
  .venv/bin/python -m robuniv.data fetch fashion_mnist "$work/resources/fashion_mnist" >/dev/null \
    || return
  .venv/bin/python -c 'import sys; from pathlib import Path
sys.path.insert(0, "tests/workflow")
from smoke import write_config
write_config(Path(sys.argv[1]) / "config.yaml", Path("resources/fashion_mnist"))' "$work" \
    || return
  local log=$work/apptainer-calls.log
  PATH="$bin:$PATH" ROBUNIV_IMAGE=$image ROBUNIV_APPTAINER_LOG=$log PYTHONHASHSEED=0 \
    .venv/bin/snakemake --snakefile "$PWD/Snakefile" --directory "$work" \
    --configfile "$work/config.yaml" --cores 2 --sdm apptainer --apptainer-args="--nv" \
    --quiet rules || {
    tmpdirs=("$bin")
    echo "   failed; kept $work (logs/, apptainer-calls.log)"
    return 1
  }
  echo "   $(grep -c ' exec ' "$log") jobs ran in $image;" \
    "$(find "$work/results" -name '*.pdf' | wc -l) PDF figures"
  grep -m1 ' exec ' "$log" | cut -c1-600
}

step=${1:-all}
{ # one compound command: bash has read all of it before it runs (safe to edit meanwhile)
  case "$step" in
    base) timed base bootstrap_base ;;
    build) timed build build_image ;;
    test) timed test test_image ;;
    workflow) timed workflow workflow_in_image ;;
    all)
      timed base bootstrap_base && timed build build_image \
        && timed test test_image && timed workflow workflow_in_image
      ;;
    *)
      echo "usage: $0 [all|base|build|test|workflow]" >&2
      exit 2
      ;;
  esac
  exit
}
