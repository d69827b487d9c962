# syntax=docker/dockerfile:1
# vidtag, CPU image: `vidtag serve` on ONNX Runtime (no torch), the bundled model, non-root.
#   docker build -t vidtag .
#   docker run --rm -p 50051:50051 -p 9464:9464 vidtag            # gRPC on 50051, /metrics on 9464
# Settings: `vidtag serve` flags after the image name, or VIDTAG_<FIELD> variables (README,
# "Configuration reference"). The GPU variant is Dockerfile.gpu.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/vidtag/bin:$PATH
RUN python -m venv /opt/vidtag
WORKDIR /build
# Dependencies exactly as locked (versions and hashes; `make lock` regenerates the lock), in
# their own layer so that a source change does not reinstall them.
COPY requirements/serve.lock requirements/serve.lock
RUN pip install --require-hashes -r requirements/serve.lock
COPY pyproject.toml README.md ./
COPY proto proto
COPY src src
# gRPC stubs are generated here (never committed), then the package goes in without touching
# the locked dependencies. grpcio-tools (and the setuptools it brought) only serve this stage:
# they are removed from the environment the runtime stage copies.
RUN python -m grpc_tools.protoc -Iproto --python_out=src --pyi_out=src --grpc_python_out=src \
        proto/vidtag/v1/tagger.proto \
 && pip install --no-deps --no-build-isolation . \
 && pip uninstall -y grpcio-tools setuptools \
 && python -c "import vidtag.v1.tagger_pb2_grpc, vidtag.server.app, onnxruntime, av" \
 && if python -c "import torch" 2>/dev/null; then echo "torch must not be in the CPU image" >&2; exit 1; fi

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/vidtag/bin:$PATH \
    VIDTAG_MODELS=/opt/vidtag/models \
    VIDTAG_PORT=50051 \
    VIDTAG_METRICS_PORT=9464
RUN groupadd --system --gid 10001 vidtag \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin vidtag
COPY --from=builder /opt/vidtag /opt/vidtag
# The model repository (models/<name>/<version>/); mount another over it, or point
# VIDTAG_MODELS / --models elsewhere. Read-only for the server's user.
COPY models /opt/vidtag/models
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 9464
# grpc.health.v1 Check on 127.0.0.1:$VIDTAG_PORT: healthy once the model is loaded and warm,
# unhealthy while draining after SIGTERM. (A TLS-only server needs `vidtag health --tls-ca-file`.)
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["vidtag", "health", "--timeout", "3"]
# SIGTERM: NOT_SERVING, in-flight requests get --grace-s (default 10 s) to finish; give the
# container longer than that to stop (docker stop -t 15, compose stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["vidtag", "serve"]
