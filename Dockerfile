# The SynPref Airflow image: the official Airflow 3.3.2 image + this project's requirements and library.
FROM apache/airflow:3.3.2-python3.11
# CPU torch by default; the gpu profile builds with a CUDA index (TORCH_INDEX_URL build arg).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY requirements.txt /requirements.txt
# Airflow pinned on the same command line so that no requirement can move it.
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" "apache-airflow==3.3.2" -r /requirements.txt
COPY --chown=airflow:root pyproject.toml README.md /opt/synpref/
COPY --chown=airflow:root include /opt/synpref/include
RUN pip install --no-cache-dir --no-deps -e /opt/synpref
