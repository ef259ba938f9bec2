# The operator image: kopf handlers and renderers only (no torch, no Ray runtime).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY protege ./protege
COPY operator ./operator
COPY serving ./serving
COPY training ./training
RUN pip install --no-cache-dir '.[operator]'
USER 65532:65532
ENTRYPOINT ["kopf", "run", "--standalone", "-m", "protege.operator.main"]
