"""Thin ComfyUI adapters (V3 schema) over ``guidance/``."""
from comfy_api.latest import ComfyExtension, io

from .curve import MemSafeGuidanceCurve
from .guider import MemSafeCFGGuider
from .ksampler import MemSafeKSampler
from .patch import MemSafeCFGPatch
from .scan import MemSafeMemorizationScan
from .testbed import NODES as TESTBED_NODES

NODES = [MemSafeCFGGuider, MemSafeKSampler, MemSafeCFGPatch, MemSafeGuidanceCurve, MemSafeMemorizationScan, *TESTBED_NODES]


class MemSafeExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
