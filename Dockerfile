# Worker image for docpipe (parse, embed, rerank, beat, migrate).
# CUDA torch by default; build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu for CPU only.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

# OpenCV, which the OCR engine (rapidocr-onnxruntime) pulls in, loads libGL and GLib.
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 docpipe \
    && mkdir -p /data && chown docpipe:docpipe /data && chmod 0700 /data
WORKDIR /app
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY workers ./workers
COPY migrations ./migrations
COPY bench ./bench
# OpenVINO too: on a host without a GPU, `auto` measures it beside torch and ONNX Runtime.
RUN pip install ".[openvino]"

USER docpipe
VOLUME ["/data"]
CMD ["docpipe", "worker", "--queues", "parse"]
