"""Memorization-Safe CFG for ComfyUI (Jain et al., "Classifier-Free Guidance inside the Attraction Basin May
Cause Memorization"). Importing this package has no side effects; ComfyUI calls ``comfy_entrypoint``."""

WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    from .nodes import MemSafeExtension

    return MemSafeExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
