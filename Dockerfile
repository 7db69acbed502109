# The bookstream worker image used by docker-compose.yml.
FROM python:3.11-slim
WORKDIR /srv/bookstream
COPY pyproject.toml setup.py README.md ./
COPY app ./app
COPY agents ./agents
COPY tables ./tables
# gcc builds the compiled book core (app/book_core_c.pyx) and is removed again; BOOK_CORE=compiled
# makes a worker without it refuse to start instead of running the slower Python core unnoticed.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir . \
    && apt-get purge -y --auto-remove gcc libc6-dev && rm -rf /var/lib/apt/lists/*
ENV DATA_DIR=/data WEB_HOST=0.0.0.0 WEB_PORT=6066 BOOK_CORE=compiled
VOLUME ["/data"]
EXPOSE 6066
CMD ["faust", "-A", "app", "worker", "-l", "info"]
