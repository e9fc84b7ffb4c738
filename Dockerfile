FROM apache/airflow:3.3.2-python3.11
COPY requirements.txt /requirements.txt
# pin Airflow so requirements cannot move it; torch is pinned in requirements.txt (CPU build via the PyTorch index)
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu "apache-airflow==3.3.2" -r /requirements.txt
COPY --chown=airflow:root pyproject.toml README.md /opt/synpref/
COPY --chown=airflow:root include /opt/synpref/include
RUN pip install --no-cache-dir --no-deps -e /opt/synpref
# deployment-only providers (CeleryExecutor, FAB auth manager for the admin user)
RUN pip install --no-cache-dir "apache-airflow==3.3.2" apache-airflow-providers-celery apache-airflow-providers-fab
