# The bookstream worker image used by docker-compose.yml.
FROM python:3.11-slim
WORKDIR /srv/bookstream
COPY pyproject.toml README.md ./
COPY app ./app
COPY agents ./agents
COPY tables ./tables
RUN pip install --no-cache-dir .
ENV DATA_DIR=/data WEB_HOST=0.0.0.0 WEB_PORT=6066
VOLUME ["/data"]
EXPOSE 6066
CMD ["faust", "-A", "app", "worker", "-l", "info"]
