"""Triton kernels, installed as ``fastddpm.kernels`` (the top-level name ``kernels`` is another PyPI project's).

Each fused op will sit beside its pure-torch twin with the same signature. Empty until the kernels land.
"""
