# One image for every sagakit process: the API, the workers, the migration job and Flower
# differ only by their command (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SAGAKIT_DATA_DIR=/data/sagakit \
    SLAM_OUTPUT_DIR=/data/maps

RUN groupadd --system --gid 10001 sagakit \
 && useradd --system --uid 10001 --gid sagakit --create-home --home-dir /home/sagakit sagakit

WORKDIR /app

# Dependencies first, from the project's own metadata: this layer is rebuilt only when
# pyproject.toml changes. Stub packages stand in for the code so the build backend can run.
# The tracing extra is in the image, off until SAGAKIT_TRACING=true.
COPY pyproject.toml README.md ./
RUN mkdir -p src/sagakit src/sagakit_examples \
 && touch src/sagakit/__init__.py src/sagakit_examples/__init__.py \
 && pip install ".[api,tracing]" \
 && rm -rf src

# Then the code itself (no dependency resolution here): sagakit and the SLAM example that the
# default SAGAKIT_IMPORTS=sagakit_examples.slam names, both installed from one wheel.
COPY src ./src
RUN pip install --no-deps --force-reinstall . \
 && rm -rf src

# The working directory (embedded SQLite default, ./out), the SLAM maps and the data directory
# (Flower's state; a volume in compose starts with this owner and mode) are writable by the app
# user; the installed code is not.
RUN mkdir -p /data/maps /data/sagakit \
 && chown sagakit:sagakit /app /data/maps /data/sagakit \
 && chmod 700 /data/sagakit

USER sagakit

EXPOSE 8000 5555

CMD ["sagakit", "--help"]
