FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 OMP_NUM_THREADS=1
WORKDIR /opt/remedy-dask
COPY pyproject.toml README.md ./
COPY remedy_dask ./remedy_dask
RUN pip install .
WORKDIR /data
EXPOSE 8787
ENTRYPOINT ["remedy-dask"]
CMD ["--help"]
