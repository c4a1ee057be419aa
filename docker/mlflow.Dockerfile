# The MLflow tracking server with the Postgres driver and S3 client it needs in the stack.
FROM python:3.11-slim-bookworm
RUN pip install --no-cache-dir "mlflow==3.17.2" "psycopg2-binary>=2.9" "boto3>=1.34"
EXPOSE 5000
