# The image of every Airflow service in docker-compose.yaml: Airflow's own 3.3.1 image on
# Python 3.12 (the Python of MWAA 3.3.1) plus requirements.txt, installed the way MWAA installs
# it: pip with Airflow's 3.3.1 constraints, and apache-airflow pinned so nothing can move it.
# `docker compose up --build` (re)builds it; the layers are cached until these files change.
FROM apache/airflow:3.3.1-python3.12

COPY requirements.txt /opt/airflow/requirements.txt
COPY constraints/airflow-3.3.1-py3.12.txt /opt/airflow/constraints/airflow-3.3.1-py3.12.txt

RUN pip install --no-cache-dir "apache-airflow==3.3.1" \
        -r /opt/airflow/requirements.txt \
        -c /opt/airflow/constraints/airflow-3.3.1-py3.12.txt \
    && pip check
