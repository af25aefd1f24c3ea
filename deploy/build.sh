#!/usr/bin/env bash
# Build the dinotune images from local parts only: a Debian base image and a folder of wheels.
#
#   deploy/build.sh            all three steps below, each skipped when its result is already there
#   deploy/build.sh base       a Debian base image (python3) made with mmdebstrap and `docker import`
#   deploy/build.sh wheels     dinotune's wheel (rebuilt every time) and every wheel the images install, pinned by
#                              deploy/constraints.txt (online step; wheels already there are kept)
#   deploy/build.sh images     the two images from BASE_IMAGE and the wheelhouse (the build context), offline
#
# Environment (all optional):
#   BASE_IMAGE     image to build on: python3 (3.11, with venv) on glibc (default dinotune-base:bookworm)
#   DEBIAN_MIRROR  mirror mmdebstrap reads (default http://deb.debian.org/debian; a local mirror or
#                  http://snapshot.debian.org/archive/debian/<date>T000000Z for a fixed package set)
#   SUITE          Debian release of the base (default bookworm: its python3 is 3.11, as the wheels)
#   WHEELHOUSE     folder of wheels and constraints.txt (default deploy/wheelhouse)
#   TORCH_INDEX    where the torch CPU wheel comes from (default https://download.pytorch.org/whl/cpu;
#                  pip's own configuration, e.g. --find-links, is used as well)
#   TAG            image tag (default: the package version); IMAGE_NAME (default dinotune)
#   TARGETS        which images (default "serve-onnx full")
#   DOCKER         docker command (default docker)
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-docker}
SUITE=${SUITE:-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_IMAGE=${BASE_IMAGE:-dinotune-base:$SUITE}
WHEELHOUSE=${WHEELHOUSE:-deploy/wheelhouse}
TORCH_INDEX=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}  # empty: pip's own configuration only
IMAGE_NAME=${IMAGE_NAME:-dinotune}
TAG=${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)}
TARGETS=${TARGETS:-serve-onnx full}
PYTHON=${PYTHON:-python3}
# The platform of the base image's python3, so the wheels can be downloaded on any machine.
PLATFORM=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
          --platform linux_x86_64 --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none)

base() {
  # minbase + python3 (merged /usr set up by the hook, not by the usrmerge package, which pulls in perl).
  # Documentation is left out, except each package's copyright file.
  mmdebstrap --variant=minbase --include=python3,python3-venv,libgomp1 \
    --hook-dir=/usr/share/mmdebstrap/hooks/maybe-merged-usr \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    "$SUITE" - "$DEBIAN_MIRROR" \
    | "$DOCKER" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE"
}

wheels() {
  mkdir -p "$WHEELHOUSE"
  rm -f "$WHEELHOUSE"/dinotune-*.whl
  "$PYTHON" -m pip wheel --no-deps --wheel-dir "$WHEELHOUSE" .
  # torch's CPU build: from TORCH_INDEX (PyPI's torch is the CUDA build, with GBs of dependencies)
  local torch
  torch=$(grep '^torch==' deploy/constraints.txt)
  if ! compgen -G "$WHEELHOUSE/torch-${torch#torch==}-*.whl" >/dev/null; then
    "$PYTHON" -m pip download --no-deps --only-binary=:all: "${PLATFORM[@]}" --dest "$WHEELHOUSE" \
      ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} "$torch"
  fi
  local package
  package=$(ls "$WHEELHOUSE"/dinotune-*.whl)  # by path: a package of the same name elsewhere is never used
  "$PYTHON" -m pip download --only-binary=:all: "${PLATFORM[@]}" --dest "$WHEELHOUSE" \
    --find-links "$WHEELHOUSE" --constraint deploy/constraints.txt \
    "$package[serve-onnx]" "$package[serve,export]"
  cp deploy/constraints.txt "$WHEELHOUSE/constraints.txt"
  "$PYTHON" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))
    ["project"]["optional-dependencies"]["serve-onnx"]))' > "$WHEELHOUSE/serve-onnx.txt"
}

images() {
  for target in $TARGETS; do
    # The context is the wheelhouse alone: nothing else of this folder can reach the image.
    "$DOCKER" build --file deploy/Dockerfile --target "$target" --build-arg BASE_IMAGE="$BASE_IMAGE" \
      --tag "$IMAGE_NAME:$TAG-$target" "$WHEELHOUSE"
  done
  for target in $TARGETS; do
    size=$("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE_NAME:$TAG-$target")
    echo "$IMAGE_NAME:$TAG-$target $((size / 1000000)) MB"
  done
}

has_base() { "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; }
has_wheels() { compgen -G "$WHEELHOUSE/dinotune-*.whl" >/dev/null && compgen -G "$WHEELHOUSE/torch-*.whl" >/dev/null; }

case "${1:-all}" in
  base) base ;;
  wheels) wheels ;;
  images) images ;;
  all)
    has_base || base
    has_wheels || wheels
    images
    ;;
  *) echo "usage: deploy/build.sh [base|wheels|images|all]" >&2; exit 2 ;;
esac
