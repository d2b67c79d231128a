# Image of the indexer and the read API (one image, the command picks the role).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The dependencies first, from pyproject.toml alone: this layer is rebuilt only when they
# change, not on every change of the code.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the code, installed without resolving anything again; pip check fails the build if
# pyproject.toml asks for something the layer above did not install.
COPY . .
RUN pip install --no-deps . \
    && pip check \
    && useradd --system --no-create-home --shell /usr/sbin/nologin loyalty

USER loyalty
# Inside the container the API listens on every interface, so that a published port reaches it.
CMD ["readapi", "serve", "--host", "0.0.0.0"]
# For the default command (the read API); another role (the indexer) sets its own check. The
# slim image has no curl: the probe is Python's.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('LOYALTY_API_PORT') or '8080'), timeout=2)"]
