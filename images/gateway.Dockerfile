# The pools' gateway image: `protege gateway` (capture to NATS, routing, the teacher as fallback).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protege ./protege
COPY operator ./operator
COPY serving ./serving
COPY training ./training
RUN pip install --no-cache-dir '.[serving]' && python -c "import protege.serving.gateway.app"
USER 65532:65532
ENTRYPOINT ["protege"]
CMD ["gateway"]
