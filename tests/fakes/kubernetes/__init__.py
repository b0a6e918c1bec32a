"""A scheduler and a "process kubelet" for the real control plane in ``tests/k8s``.

It runs as its own process (``python tests/fakes/kubernetes ...``, see ``__main__.py``);
``tests/k8s/harness.py``'s ``ProcessKubelet`` starts and stops it. See README.md.
"""
