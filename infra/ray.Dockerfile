# recfeast with Ray: the image of the Ray head and workers in docker-compose.yml. Every node runs the
# same recfeast, torch and model packages (a worker checks that it loads the model the driver expects).
#   docker compose -f infra/docker-compose.yml build ray-head
FROM python:3.11-slim
WORKDIR /opt/recfeast
COPY pyproject.toml README.md ./
COPY recfeast recfeast
COPY materialize materialize
COPY training training
COPY serving serving
RUN pip install --no-cache-dir .
