# Aggregation server image: `fedmeta server` (Flower SuperLink + the FedMeta ServerApp).
#
#   docker build -f docker/server.Dockerfile -t fedmeta-factory/server:0.1.0 .
#
# flwr/superlink is published for the newest Python only (py3.13), and this project is built
# and tested on 3.11; flwr/superexec, Flower's base for app images, is the same flwr/base image
# (flwr 1.42.0 with flower-superlink and the flwr CLI in /python/venv, non-root user `app`,
# uid 49999, home /app) and has a py3.11 tag. The tag must follow the flwr pin in pyproject.toml.
# Another base laid out the same way (a Python 3.11 venv at /python/venv, first on PATH and writable by
# uid 49999, home /app) works too: docker/build_on_debian.sh builds one from Debian's own packages.
ARG BASE_IMAGE=flwr/superexec:1.42.0-py3.11-ubuntu24.04
FROM ${BASE_IMAGE}

# Dependencies are baked into the image: Flower must not install anything at run time.
ENV FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Numeric, so that runtimes enforcing non-root (Kubernetes runAsNonRoot) can verify it.
USER 49999
# Made by that user: the classic builder creates a WORKDIR owned by root, where pip could not
# build the project.
RUN mkdir /app/src
WORKDIR /app/src

# Aggregation and the outer optimizer step are cheap: the server takes the CPU wheel (another index
# only for a mirror of it, where download.pytorch.org is out of reach).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
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
# Created in the image so that a fresh named volume mounted here is owned by `app`.
RUN mkdir -p /app/state
VOLUME ["/app/state"]

# The SuperLink's Fleet API, the one API factories reach (Flower's default port 8000). Its Control and
# runtime APIs (9093) listen on the container's loopback only: `docker compose exec server flwr ...`.
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import socket; socket.create_connection(('127.0.0.1', 8000), timeout=3).close()"]

ENTRYPOINT ["fedmeta-server"]
CMD ["--help"]
