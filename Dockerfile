# One image for every vramq service. EXTRAS=gpu adds TensorFlow with CUDA for the worker (node) image.
FROM python:3.11-slim
ARG EXTRAS=""
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 VRAMQ_HOME=/var/lib/vramq
WORKDIR /opt/vramq
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
COPY examples ./examples
RUN pip install -e ".${EXTRAS:+[$EXTRAS]}" && mkdir -p /var/lib/vramq
EXPOSE 8000
CMD ["vramq", "up"]
