# One image for every Python service; each container picks its service with its command:
#   python -m services.api | services.scheduler | services.sender | services.reporter | services.probe_stub | shared.migrate
# Build: docker build -t mailing-service .

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
RUN pip install "uv>=0.5,<1"
WORKDIR /app
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
COPY shared/ shared/
COPY services/ services/
COPY alembic.ini ./
# The root filesystem is read-only at run time: compile the bytecode now.
RUN python -m compileall -q shared services

# The admin UI's front-end packages (htmx, Pico CSS, Chart.js) from the lock file, without the
# development ones; the API serves them from /app/node_modules.
FROM node:20-slim AS assets
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM python:3.11-slim
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 mailing \
    && useradd --system --uid 10001 --gid mailing --home-dir /app --no-create-home --shell /usr/sbin/nologin mailing
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY --from=build /app/shared /app/shared
COPY --from=build /app/services /app/services
COPY --from=build /app/alembic.ini /app/alembic.ini
COPY --from=assets /app/node_modules /app/node_modules
USER 10001:10001
# api 8000, scheduler metrics 9101, sender metrics 9102, reporter metrics 9103, probe stand-in 8090
EXPOSE 8000 9101 9102 9103 8090
CMD ["python", "-m", "services.api"]
