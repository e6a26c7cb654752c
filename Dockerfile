# curata service: the HTTP API and web page over a workspace mounted at /workspace.
#   docker build -t curata .
#   docker run --rm -p 9797:9797 -v "$PWD/curata-workspace:/workspace" curata
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CURATA_WORKSPACE=/workspace \
    CURATA_CACHE=/home/curata/.cache/curata

# libglib: for OpenCV (headless); curl: the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libglib2.0-0 curl \
    && rm -rf /var/lib/apt/lists/*

# The CPU build of torch first, from its own index, so no dependency can pull a CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
# torch==2.13.0 in the package's requirements is already satisfied by 2.13.0+cpu: nothing else is pulled.
RUN pip install .

RUN useradd --create-home --uid 10001 curata && mkdir -p /workspace && chown curata:curata /workspace
USER curata
VOLUME ["/workspace"]
EXPOSE 9797

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9797/v1/health || exit 1

# Options: --workers N, --api-key-file FILE (or -e CURATA_API_KEY=...), --cors-origin URL, --allow-urls,
# --allowed-host NAME (the names clients use; any by default on 0.0.0.0). It listens on 0.0.0.0: started
# without a key, `curata serve` prints a warning that anyone who can reach the port can use the service.
ENTRYPOINT ["curata", "serve", "--host", "0.0.0.0", "--port", "9797", "--workspace", "/workspace"]
CMD []
