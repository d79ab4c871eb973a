"""The memorization testbed: a small digit model that copies its duplicated exemplars under plain CFG.

The pack's guidance core is imported here, once, for every testbed module (inside the pack or from the repo root).
"""
try:
    from .. import guidance  # inside the pack (memsafe_cfg.testbed)
except ImportError:  # `python -m testbed.reproduce` from the repo root
    import guidance

__all__ = ["guidance"]
