#!/usr/bin/env bash
# `make image`: build Kino's CPU image on this machine, where no base image can be pulled.
#
#   1. podman, buildah, runc and debootstrap from Debian's packages, if missing (as root);
#   2. a Debian bookworm root filesystem with python3 and python3-venv, made by debootstrap from the mirror
#      apt already uses, imported as the base image localhost/kino-base:bookworm (once; KINO_REBASE=1 redoes it);
#   3. the CPU torch wheel runtime.lock pins, from pip's local find-links, into deploy/image/wheels/;
#   4. deploy/image/Containerfile built on that base, the same file anyone builds from a registry base, tagged
#      ghcr.io/kino-project/kino:<version from pyproject.toml> (KINO_IMAGE overrides), with the commit and the
#      Ray version of the lock as labels. Prints the image's size.
#
# Podman on this machine needs Debian's runc (crun refuses its hybrid cgroups) and explicit ulimits (it cannot
# raise the defaults). `make image-smoke` then runs the image (deploy/image/smoke.py).
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
RAY_VERSION=$(sed -n 's/^ray==\([^ ]*\).*/\1/p' requirements/runtime.lock)
TORCH=$(sed -n 's/^torch==\([^ ]*\).*/\1/p' requirements/runtime.lock)
IMAGE=${KINO_IMAGE:-ghcr.io/kino-project/kino:$VERSION}
BASE=localhost/kino-base:bookworm
ROOTFS=.cache/image/rootfs
ULIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)

need=()
for tool in podman buildah runc debootstrap; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" uidmap >/dev/null
fi

mirror() {  # the Debian mirror apt uses here (deb822 or one-line sources)
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '/^deb / && / bookworm / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$uri" ] || { echo "no Debian mirror found in apt's sources" >&2; exit 1; }
    echo "$uri"
}

if [ -n "${KINO_REBASE:-}" ] || ! podman image exists "$BASE"; then
    echo "debootstrap: Debian bookworm with python3 into $ROOTFS"
    rm -rf "$ROOTFS" && mkdir -p "$ROOTFS"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" "$(mirror)" \
        >.cache/image/debootstrap.log 2>&1 || { tail -20 .cache/image/debootstrap.log; exit 1; }
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    tar -C "$ROOTFS" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
    rm -rf "$ROOTFS"
fi

echo "torch $TORCH into deploy/image/wheels/"
rm -f deploy/image/wheels/*.whl
python3 -m pip download -q --no-deps --only-binary=:all: -d deploy/image/wheels "torch==$TORCH"

echo "building $IMAGE on $BASE (Ray $RAY_VERSION)"
# The build's RUN steps see this machine's CA bundle (its registry traffic passes a TLS-inspecting proxy);
# the image keeps Debian's own.
podman build --runtime runc "${ULIMITS[@]}" --network host -f deploy/image/Containerfile \
    --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    --build-arg BASE="$BASE" --build-arg VERSION="$VERSION" --build-arg RAY_VERSION="$RAY_VERSION" \
    --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" -t "$IMAGE" .
rm -f deploy/image/wheels/*.whl
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "built $IMAGE: $((size / 1024 / 1024)) MiB"
