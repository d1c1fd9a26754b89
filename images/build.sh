#!/usr/bin/env bash
# Build and push the deepmmsearch images: train (GPU), toolserver, mlflow.
#   REGISTRY=registry.example.com/deepmmsearch TAG=0.1.0 images/build.sh [train toolserver mlflow]
# REGISTRY is required (where to push); TAG defaults to the package version in pyproject.toml;
# PUSH=0 builds only. Set the same registry/tag in your overlay's `images:` block.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${REGISTRY:-}" ]]; then
  echo "error: set REGISTRY to the registry/prefix to push to, e.g. REGISTRY=ghcr.io/you/deepmmsearch" >&2
  exit 2
fi
if ! command -v docker >/dev/null 2>&1; then
  echo "error: docker is not installed or not on PATH" >&2
  exit 2
fi
TAG="${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)}"
PUSH="${PUSH:-1}"
IMAGES=("$@")
[[ ${#IMAGES[@]} -eq 0 ]] && IMAGES=(toolserver mlflow train)

for name in "${IMAGES[@]}"; do
  if [[ ! -f "images/${name}/Dockerfile" ]]; then
    echo "error: no images/${name}/Dockerfile (known: train, toolserver, mlflow)" >&2
    exit 2
  fi
  ref="${REGISTRY%/}/${name}:${TAG}"
  echo "== building ${ref}" >&2
  docker build -f "images/${name}/Dockerfile" -t "${ref}" .
  if [[ "${PUSH}" == "1" ]]; then
    docker push "${ref}"
  fi
done
