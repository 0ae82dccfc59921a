# Two images from one file.
#
#   docker build .                    the task-history image (the last stage, `app`): one entry
#                                     point for migrate, consume, schedule and the operator commands
#   docker build --target postgres .  PostgreSQL 17 with pg_cron installed, for docker-compose.yml
#                                     (which preloads it); most managed PostgreSQL services offer
#                                     pg_cron already

FROM postgres:17-bookworm AS postgres
# The image's own PostgreSQL apt repository carries pg_cron for its major version.
RUN apt-get update \
    && apt-get install -y --no-install-recommends "postgresql-${PG_MAJOR}-cron" \
    && rm -rf /var/lib/apt/lists/*


FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY consumer ./consumer
COPY sql ./sql
# Wheels of the project and of what the service runs on (the `service` extra; no test extras).
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[service]'


FROM python:3.12-slim AS app
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TASK_HISTORY_LOG_FORMAT=json \
    TASK_HISTORY_METRICS_PORT=9464
RUN useradd --system --uid 10001 --home-dir /app task-history
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'task-build-history[service]' \
    && rm -rf /wheels
USER task-history
EXPOSE 9464
# Alive means the consumer's HTTP server answers /healthz (the slim image has no curl; the
# command uses Python's urllib). Commands other than `consume` serve nothing: compose turns
# the check off for them.
HEALTHCHECK --interval=15s --timeout=6s --start-period=30s --retries=3 \
    CMD ["task-history", "health"]
ENTRYPOINT ["task-history"]
CMD ["--help"]
