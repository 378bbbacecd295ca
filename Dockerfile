# The nightshift image: Airflow 3 with the project's pinned dependencies and code.
# .dockerignore keeps .env (secrets), virtualenvs, data/, .airflow/, .git, logs and build
# output out of the build context; the build fails if a .env got in anyway. Secrets reach
# the containers at run time (compose's env_file / environment), never the image.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/nightshift/
RUN pip install --no-cache-dir -r /opt/nightshift/requirements.txt -c /opt/nightshift/constraints.txt
COPY --chown=airflow:0 . /opt/nightshift
RUN if [ -e /opt/nightshift/.env ] || [ -e /opt/nightshift/data ] || ls -d /opt/nightshift/.venv* >/dev/null 2>&1; then \
      echo ".env, data/ or a virtualenv is in the build context: fix .dockerignore" >&2; exit 1; \
    fi
ENV PYTHONPATH=/opt/nightshift \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false \
    GX_ANALYTICS_ENABLED=false \
    AIRFLOW__USAGE_DATA_COLLECTION__ENABLED=False
WORKDIR /opt/nightshift
