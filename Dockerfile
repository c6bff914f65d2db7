# zscir serve in a container: CPU torch, the package, and the shapes world's defaults built on first use.
#   docker build -t zscir .
#   docker run -p 8000:8000 -e ZSCIR_API_KEY=change-me -v $PWD/my_index:/index zscir --index /index
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1
WORKDIR /opt/zscir

# CPU wheels of torch first (the default wheel carries CUDA, ~2 GB more)
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision

COPY pyproject.toml setup.cfg README.md ./
COPY zscir ./zscir
RUN pip install .

RUN useradd --create-home --uid 10001 zscir
USER zscir
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez')"
# an API key is required off loopback: pass ZSCIR_API_KEY (or --insecure-no-auth behind your own gateway)
ENTRYPOINT ["zscir", "serve", "--host", "0.0.0.0", "--port", "8000", "--log-format", "json", "--access-log"]
