"""Test-side fakes of the systems the launchers drive, where the real ones cannot run here.

``schedd``: an HTCondor schedd stand-in; ``kubernetes``: a scheduler and a process kubelet for
the real control plane in ``tests/k8s``. Kept import-free: the fakes run as child processes
that import their own package only.
"""
