# The pools' RayService image: Ray Serve + CUDA vLLM from Ray's LLM image, protege's Serve app on top.
# Ray and vLLM come from the base image (its versions are the ones KubeRay's RayService runs);
# protege[serving] adds the gateway/router libraries without replacing them.
ARG RAY_VERSION=2.60.0
FROM rayproject/ray-llm:${RAY_VERSION}-py311-cu128
WORKDIR /home/ray/protege
COPY --chown=ray:users pyproject.toml setup.py README.md ./
COPY --chown=ray:users protege ./protege
COPY --chown=ray:users operator ./operator
COPY --chown=ray:users serving ./serving
COPY --chown=ray:users training ./training
RUN pip install --no-cache-dir --no-deps . \
 && pip install --no-cache-dir "fastapi>=0.115" "uvicorn>=0.30" "httpx>=0.27" "prometheus-client>=0.20" \
      "jsonschema>=4.23" "pydantic-settings>=2.6" "typer>=0.12" "nats-py>=2.9" "s3fs>=2024.6" "croniter>=2" \
 && python -c "import protege.serving.pool.app"
# The RayService's serveConfigV2 imports protege.serving.pool.app:build; no entrypoint of its own.
