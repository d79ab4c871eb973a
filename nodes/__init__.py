"""Thin ComfyUI adapters (V3 schema) over ``guidance/``.

Importing this package needs no ComfyUI (``nodes.adapter`` and ``nodes.live`` import without it): the node classes
and ``comfy_api`` load on first use of ``NODES`` or ``MemSafeExtension`` (PEP 562 module ``__getattr__``).
"""


def _load() -> dict:
    from comfy_api.latest import ComfyExtension, io

    from .copy_check import MemSafeCopyCheck
    from .curve import MemSafeGuidanceCurve
    from .guider import MemSafeCFGGuider
    from .ksampler import MemSafeKSampler
    from .patch import MemSafeCFGPatch
    from .scan import MemSafeMemorizationScan
    from .testbed import NODES as TESTBED_NODES

    NODES = [MemSafeCFGGuider, MemSafeKSampler, MemSafeCFGPatch, MemSafeGuidanceCurve, MemSafeMemorizationScan, MemSafeCopyCheck, *TESTBED_NODES]

    class MemSafeExtension(ComfyExtension):
        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            return list(NODES)

    return {"NODES": NODES, "MemSafeExtension": MemSafeExtension}


def __getattr__(name: str):
    if name in ("NODES", "MemSafeExtension"):
        globals().update(_load())
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
