"""Test doubles and stand-ins, kept out of the runtime packages and out of every image.

``plugin`` is the pytest plugin (real local services as fixtures, registered as ``protege``);
``stub_teacher`` and ``recorded_teacher`` are OpenAI-shaped teachers for tests, benchmarks and
the local demo; ``kuberay`` is a KubeRay controller double for the operator's tests; ``faults``
injects network faults. Nothing under serving, operator, training or the core imports them
(tests/api/test_layers.py), and .dockerignore keeps them out of the images.
"""
