# clipfit: one image for the API, the Celery worker and the migrations (docker-compose.yml).
#
#   docker build -t clipfit .
#   docker run -p 8000:8000 -v clipfit-data:/data -v clipfit-weights:/weights clipfit
#
# With no CLIPFIT_DATABASE_URL / CLIPFIT_BROKER_URL the default command is the embedded
# service: SQLite in /data and an in-process worker. docker-compose.yml runs the same image as
# separate api / worker / migrate containers on Postgres and Redis.
#
# torch==2.14.1 from PyPI (pinned in pyproject.toml) is the CUDA build: it brings the CUDA
# runtime as pip wheels, uses an NVIDIA GPU when the container is given one (NVIDIA Container
# Toolkit, `--gpus` / compose `deploy.resources.reservations.devices`) and runs on CPU otherwise.
# No CUDA base image is needed, only the host's NVIDIA driver. The image is then about 6.3 GB.
# CPU-only host: take torch and torchvision (the same pinned versions) from PyTorch's CPU index
# instead, which leaves the CUDA wheels out (several GB smaller):
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t clipfit .
#   (compose: `docker compose build --build-arg TORCH_INDEX_URL=...`)

# The Debian release is pinned (bookworm) so that rebuilds get the same system packages.
FROM python:3.11-slim-bookworm

# 1: also install Fashion-MNIST (Debian package dataset-fashion-mnist; the layer is about
# 143 MB), which `clipfit pretrain-mini` needs to build the offline base model clipfit-mini;
# 0: leave it out.
ARG FASHION_MNIST=1
# Empty: torch and torchvision from PyPI (CUDA build). A wheel index URL (e.g.
# https://download.pytorch.org/whl/cpu): those two from there, everything else from PyPI.
ARG TORCH_INDEX_URL=

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CLIPFIT_DATA_DIR=/data \
    CLIPFIT_WEIGHTS_DIR=/weights

RUN if [ "$FASHION_MNIST" = 1 ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends dataset-fashion-mnist \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# A non-root user. /data, /data/blobs (the blob store's folder) and /weights belong to it, so
# that named volumes mounted there (which copy the image's ownership when they are first
# created) are writable.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin clipfit \
    && mkdir -p /app /data/blobs /weights \
    && chown clipfit:clipfit /data /data/blobs /weights

WORKDIR /app

# Dependencies first, from pyproject.toml alone: the torch layer (several GB) is rebuilt only
# when the dependencies change, not on every source edit. The image is the server: the base
# dependencies (the client's) and the `server` extra.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['server']))" \
        > /tmp/requirements.txt \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
        grep -E '^(torch|torchvision)[=<>~! ]' /tmp/requirements.txt > /tmp/torch.txt \
        && pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" -r /tmp/torch.txt \
        && rm /tmp/torch.txt; \
    fi \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The source tree stays in /app and is installed in editable mode: registry/migrate.py finds
# alembic.ini (and through it migrations/) next to the packages, and `alembic upgrade head`
# runs from this directory.
COPY README.md alembic.ini ./
COPY migrations/ migrations/
COPY clipfit_core/ clipfit_core/
COPY registry/ registry/
COPY service/ service/
COPY worker/ worker/
COPY api/ api/
COPY clipfit/ clipfit/
RUN pip install --no-cache-dir --no-deps -e .

USER clipfit

EXPOSE 8000

# Liveness only (slim has no curl). The compose file checks readiness (/readyz) for the API
# and replaces this check for the worker and migrate containers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["clipfit", "serve", "--host", "0.0.0.0", "--port", "8000"]
