# Factory client image: `fedmeta client` (a Flower SuperNode that runs the FedMeta ClientApp).
#
#   docker build -f docker/client.Dockerfile -t fedmeta-factory/client:0.1.0 .
#   docker build -f docker/client.Dockerfile --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#       -t fedmeta-factory/client:0.1.0-cu128 .
#
# Flower's SuperNode image: Python 3.11 in /python/venv (owned by the non-root user `app`,
# uid 49999, home /app), flwr 1.42.0 installed. The tag must follow the flwr pin in pyproject.toml.
# Another base laid out the same way (a Python 3.11 venv at /python/venv, first on PATH and writable by
# uid 49999, home /app) works too: docker/build_on_debian.sh builds one from Debian's own packages.
ARG BASE_IMAGE=flwr/supernode:1.42.0-py3.11-ubuntu24.04
FROM ${BASE_IMAGE}

# The CPU wheel by default; a CUDA index gives the GPU build of the same torch version. The
# cu128 wheel bundles the CUDA runtime, so the host needs only the NVIDIA driver and toolkit.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# Dependencies are baked into the image: Flower must not install anything at run time.
ENV FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Numeric, so that runtimes enforcing non-root (Kubernetes runAsNonRoot) can verify it.
USER 49999
# Made by that user: the classic builder creates a WORKDIR owned by root, where pip could not
# build the project.
RUN mkdir /app/src
WORKDIR /app/src

# torch first, from the chosen index; the project's torch==2.13.0 pin is then already met
# (2.13.0+cpu and 2.13.0+cu128 both satisfy it), so PyPI's build is never pulled.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" torch==2.13.0

# Dependencies before the sources, so that a code change does not reinstall them.
COPY --chown=app:app pyproject.toml README.md ./
COPY --chown=app:app docker/runtime_requirements.py docker/constraints.txt docker/
RUN python docker/runtime_requirements.py pyproject.toml > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt -c docker/constraints.txt setuptools==84.2.1 \
    && rm /tmp/requirements.txt

COPY --chown=app:app common/ common/
COPY --chown=app:app client/ client/
COPY --chown=app:app server/ server/
COPY --chown=app:app simulations/ simulations/
# --no-deps: everything is installed above, without the Ray that flwr[simulation] would add.
RUN pip install --no-cache-dir --no-deps --no-build-isolation .

WORKDIR /app
# For --state (SuperNode log, Flower's files, the delivered model packages under models/): created in
# the image so that a fresh named volume mounted here is owned by `app` (docker/compose.yaml).
RUN mkdir -p /app/state

# The SuperNode's own runtime API (Flower's default port 9094), which its ClientApp processes
# connect to; it listens once the node is up. No port is published: the factory only dials out.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import socket; socket.create_connection(('127.0.0.1', 9094), timeout=3).close()"]

ENTRYPOINT ["fedmeta-client"]
CMD ["--help"]
