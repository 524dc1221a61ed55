#!/usr/bin/env bash
# Build the server and client images where Flower's base images cannot be pulled (no Docker Hub).
#
# debootstrap makes a Debian bookworm root (Python 3.11) from Debian's own packages, laid out as
# Flower's base images are (a venv at /python/venv first on PATH, owned by the non-root user `app`,
# uid 49999, home /app); `docker import` turns it into a base image, and docker/server.Dockerfile
# and docker/client.Dockerfile are built on it as committed, with BASE_IMAGE set.
#
#   docker/build_on_debian.sh        # as root (debootstrap, chroot), with dockerd running
#
# Environment:
#   PIP_CERT     CA bundle that pip inside the builds trusts (default: the host's), for networks
#                where a proxy re-signs TLS; it goes into the base image, not into the Dockerfiles.
#   TORCH_WHEEL  a torch 2.13.0 CPU wheel to install instead of download.pytorch.org's, where that
#                site is out of reach: it is served with its dependencies from a local index on
#                127.0.0.1 (the builds share the host's network for it).
# The base image is made once and reused: `docker rmi fedmeta-factory/debian-base:bookworm` to remake it.
set -euo pipefail

BASE=fedmeta-factory/debian-base:bookworm
TAG=0.1.0  # the tag docker/compose.yaml runs
INDEX_PORT=8765
CA_BUNDLE=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}

cd "$(dirname "$0")/.."
work=$(mktemp -d)
index_pid=""
cleanup() {
    if [[ -n $index_pid ]]; then kill "$index_pid"; fi
    rm -rf "$work"
}
trap cleanup EXIT

if docker image inspect "$BASE" >/dev/null 2>&1; then
    echo "reusing $BASE"
else
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$work/root" http://deb.debian.org/debian
    cp "$CA_BUNDLE" "$work/root/etc/ssl/certs/ca-certificates.crt"
    chroot "$work/root" /bin/sh -euc '
        groupadd --gid 49999 app
        useradd --uid 49999 --gid app --home-dir /app --create-home --shell /bin/sh app
        python3 -m venv /python/venv
        chown -R app:app /python
        rm -rf /var/cache/apt/* /var/lib/apt/lists/*'
    tar -C "$work/root" --numeric-owner -c . | docker import \
        --change 'ENV PATH=/python/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'USER app' \
        --change 'WORKDIR /app' \
        - "$BASE"
fi

build_args=(--build-arg "BASE_IMAGE=$BASE")
if [[ -n ${TORCH_WHEEL:-} ]]; then
    # A PEP 503 index: one folder per normalised project name, listed by http.server.
    python3 -m pip download --quiet --only-binary=:all: --python-version 3.11 --dest "$work/wheels" "$TORCH_WHEEL"
    for wheel in "$work"/wheels/*.whl; do
        name=$(basename "$wheel")
        name=${name%%-*}
        name=${name,,}
        mkdir -p "$work/index/${name//_/-}"
        mv "$wheel" "$work/index/${name//_/-}/"
    done
    python3 -m http.server --bind 127.0.0.1 --directory "$work/index" "$INDEX_PORT" >/dev/null 2>&1 &
    index_pid=$!
    until python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$INDEX_PORT/torch/')" 2>/dev/null; do
        kill -0 "$index_pid"  # stops the script if the index could not start (port taken)
        sleep 0.2
    done
    build_args+=(--build-arg "TORCH_INDEX=http://127.0.0.1:$INDEX_PORT/")
fi

for role in server client; do
    docker build --network host "${build_args[@]}" -f "docker/$role.Dockerfile" -t "fedmeta-factory/$role:$TAG" .
done
docker images 'fedmeta-factory/*'
