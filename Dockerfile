# The nightshift image: Airflow 3 with the project's pinned dependencies and code.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/nightshift/
RUN pip install --no-cache-dir -r /opt/nightshift/requirements.txt -c /opt/nightshift/constraints.txt
COPY --chown=airflow:0 . /opt/nightshift
ENV PYTHONPATH=/opt/nightshift \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false \
    GX_ANALYTICS_ENABLED=false \
    AIRFLOW__USAGE_DATA_COLLECTION__ENABLED=False
WORKDIR /opt/nightshift
