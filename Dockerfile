# HuggingFace Docker Space image for agentmemory-python.
#
#   docker build -t agentmemory . && docker run -p 7860:7860 -e AGENTMEMORY_SECRET=... agentmemory
#
# Spaces run the container as uid 1000 and route traffic to app_port 7860. Data goes to /data
# when the Space has persistent storage (start.sh checks), else to ~/.agentmemory inside the
# container, restored from and backed up to AGENTMEMORY_DATASET_REPO by sync.py.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=7860 \
    PYTHON=python \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HUB_DISABLE_PROGRESS_BARS=1 \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1

RUN useradd --create-home --uid 1000 --shell /bin/bash user
WORKDIR /home/user/app

# Dependencies first, so code changes do not re-run pip.
COPY --chown=user:user requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY --chown=user:user . .
RUN chmod 0755 start.sh sync.py

USER 1000
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/agentmemory/livez' % os.environ.get('PORT', '7860'), timeout=4)"]

STOPSIGNAL SIGTERM
CMD ["./start.sh"]
