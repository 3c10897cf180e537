# dfer: GPU image. Build: docker build -t dfer .   Run: see README.md ("Docker").
ARG BASE_IMAGE=pytorch/pytorch:2.9.1-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DFER_CACHE=/cache \
    HF_HOME=/models \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/dfer
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY stages ./stages
COPY prompts ./prompts

# Same install steps as the README's first command.
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 \
    && pip install --no-cache-dir -e ".[dev]"

RUN useradd --create-home --uid 1000 dfer \
    && mkdir -p /videos /cache /runs /models \
    && chown dfer:dfer /cache /runs /models

USER 1000:1000
VOLUME ["/videos", "/cache", "/runs", "/models"]
ENTRYPOINT ["dfer"]
CMD ["--help"]
