# hpcsnp image.  Build:   docker build -t hpcsnp .
# Run (data in the current directory, mounted at /data):
#   docker run --rm -v "$PWD":/data hpcsnp ingest height_imp.tsv.gz -o imp.zarr
#   docker run --rm -v "$PWD":/data --cpus 4 hpcsnp cv imp.zarr qa.zarr --run runs/height
# Threads follow the container's CPU limit (--cpus), SLURM_CPUS_PER_TASK, or HPCSNP_THREADS.
# BASE must provide python3.11 with venv: python:3.11-slim, or a Debian bookworm image
# with python3-minimal and python3-venv (how it is tested where Docker Hub is unreachable).
# GPU image (TensorFlow's CUDA libraries as wheels; the driver comes from the host):
#   docker build --build-arg EXTRAS=gpu -t hpcsnp:gpu .
#   docker run --rm --gpus all -v "$PWD":/data hpcsnp:gpu train imp.zarr --fold 1 --run runs/x
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG EXTRAS=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md /src/
COPY hpcsnp /src/hpcsnp
RUN /opt/venv/bin/pip install "/src[${EXTRAS}]" \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
 && rm -rf /opt/venv/lib/python3*/site-packages/tensorflow/include

FROM ${BASE}
LABEL org.opencontainers.image.title="hpcsnp" \
      org.opencontainers.image.description="Genomic prediction with a residual CNN, saliency, and out-of-core CV"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLCONFIGDIR=/tmp/matplotlib
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin hpcsnp \
 && mkdir /data && chown hpcsnp /data
USER 1000:1000
WORKDIR /data
ENTRYPOINT ["hpcsnp"]
CMD ["--help"]
