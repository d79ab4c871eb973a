"""Shared test setup: load the pack as the package ``memsafe_cfg`` (as ComfyUI does), and find the host.

The repo root is never put on sys.path, so the pack's ``nodes/`` folder cannot shadow ComfyUI's ``nodes``.
Host tests need a ComfyUI checkout at COMFYUI_PATH; without it they skip, and the run says so loudly.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported (host imports it)
from host import import_comfy, load_module, load_pack  # noqa: E402

COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")
HOST_MISSING = "HOST TESTS SKIPPED: COMFYUI_PATH is unset or not a ComfyUI checkout; set it to run the real-ComfyUI tier."


load_pack()


def load_test_module(name: str):
    """tests/<name>.py by path (``host.load_module``): once ComfyUI is imported in process, a plain ``import server``
    is ComfyUI's server.py."""
    return load_module(f"memsafe_tests_{name}", Path(__file__).with_name(f"{name}.py"))


def host_available() -> bool:
    return bool(COMFYUI_PATH) and (Path(COMFYUI_PATH) / "comfy" / "samplers.py").is_file()


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI's ``comfy`` package, imported from COMFYUI_PATH on the CPU (``host.import_comfy``)."""
    if not host_available():
        pytest.skip(HOST_MISSING)
    return import_comfy()


@pytest.fixture(scope="session")
def comfy_server():
    """One real ComfyUI server for the whole session (tests that use it are host tests)."""
    if not host_available():
        pytest.skip(HOST_MISSING)
    with load_test_module("server").ComfyServer(COMFYUI_PATH) as srv:
        yield srv


def pytest_configure(config):
    config.addinivalue_line("markers", "host: needs a real ComfyUI checkout at COMFYUI_PATH")


def pytest_collection_modifyitems(config, items):
    if host_available():
        return
    skip = pytest.mark.skip(reason=HOST_MISSING)
    for item in items:
        if "host" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    return f"ComfyUI host: {COMFYUI_PATH}" if host_available() else HOST_MISSING


def pytest_terminal_summary(terminalreporter):
    if not host_available():
        terminalreporter.write_line(HOST_MISSING, red=True, bold=True)
