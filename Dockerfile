FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOST=0.0.0.0 PORT=8000
WORKDIR /app

COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .
# Static assets (admin, Swagger UI, ReDoc) are collected at build time and served by whitenoise.
RUN SECRET_KEY=build-only python manage.py collectstatic --noinput \
    && useradd --system --home /app gateway && mkdir -p var && chown -R gateway var
USER gateway

EXPOSE 8000
# gunicorn.conf.py migrates and inserts demo keys before starting the workers.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "ollama_gateway.asgi"]
