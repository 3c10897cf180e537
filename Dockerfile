# dfer: GPU image. Build: docker build -t dfer .   Run: see README.md ("Docker").
# torch and torchvision come with the base image and satisfy the package's requirements, so pip keeps them; the
# package is built into a wheel in a first stage and installed (not editable, no dev or test tools) in the second.
ARG BASE_IMAGE=pytorch/pytorch:2.9.1-cuda13.0-cudnn9-runtime

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY stages ./stages
COPY prompts ./prompts
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DFER_CACHE=/cache \
    HF_HOME=/models \
    MPLCONFIGDIR=/tmp/matplotlib

COPY --from=build /wheels /wheels
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN pip install --no-cache-dir "$(ls /wheels/dfer_pipeline-*.whl)[train,ray,identity]" \
    && rm -rf /wheels \
    && useradd --create-home --uid 1000 dfer \
    && mkdir -p /videos /cache /runs /models \
    && chown dfer:dfer /cache /runs /models

USER 1000:1000
VOLUME ["/videos", "/cache", "/runs", "/models"]
ENTRYPOINT ["dfer"]
CMD ["--help"]
