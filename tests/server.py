"""A real ComfyUI server for host tests: this pack in custom_nodes, tiny generated models, loopback only."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Installed as a git clone would be (README): a folder name that is neither the project name
# (memorization-safe-cfg) nor a Python identifier, so a web folder registered twice or a relative import that
# depends on the folder name shows up here.
PACK_DIR_NAME = "ComfyUI-MemSafe-CFG"
FLOW_MODEL = "tiny_sd3.safetensors"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """Start ``main.py`` from COMFYUI_PATH on 127.0.0.1 with this pack and a tiny SD3-shaped model."""

    def __init__(self, comfyui_path: str, startup_timeout: float = 120.0, front_end_root: str | None = None):
        """``front_end_root``: serve that front end (an unpacked comfyui-frontend-package's ``static`` folder)
        instead of the one pinned in the host's requirements."""
        self.comfyui = Path(comfyui_path)
        self.front_end_root = front_end_root
        self.tmp = Path(tempfile.mkdtemp(prefix="memsafe-comfy-"))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.proc = None
        self.log_path = self.tmp / "server.log"

    def __enter__(self) -> "ComfyServer":
        custom = self.tmp / "custom_nodes"
        custom.mkdir()
        (custom / PACK_DIR_NAME).symlink_to(REPO, target_is_directory=True)
        models = self.tmp / "models" / "diffusion_models"
        models.mkdir(parents=True)
        from host import tiny_flow_checkpoint  # imports ComfyUI in this process only to write the weights

        tiny_flow_checkpoint(models / FLOW_MODEL)
        (self.tmp / "output").mkdir()
        (self.tmp / "user").mkdir()
        (self.tmp / "input").mkdir()  # templates write here (Testbed Training Images): never the host checkout's input/
        cfg = self.tmp / "extra_model_paths.yaml"
        cfg.write_text(f"memsafe_test:\n  base_path: {self.tmp}\n  custom_nodes: custom_nodes\n"
                       f"  diffusion_models: models/diffusion_models\n  checkpoints: models/checkpoints\n")
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
               "--extra-model-paths-config", str(cfg), "--database-url", "sqlite:///:memory:",
               "--output-directory", str(self.tmp / "output"), "--temp-directory", str(self.tmp),
               "--user-directory", str(self.tmp / "user"), "--input-directory", str(self.tmp / "input")]
        if self.front_end_root:
            cmd += ["--front-end-root", str(self.front_end_root)]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.comfyui, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited at startup:\n{self.log_path.read_text()[-4000:]}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.__exit__(None, None, None)
        raise RuntimeError("ComfyUI did not start in time")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "log", None):
            self.log.close()
        if os.environ.get("MEMSAFE_KEEP_SERVER_DIR") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)

    def output_dir(self) -> Path:
        return self.tmp / "output"

    def server_log(self) -> str:
        return self.log_path.read_text()

    # -- HTTP -------------------------------------------------------------------------------------------------
    def get(self, path: str, raw: bool = False):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            body = r.read()
        return body if raw else json.loads(body)

    def post(self, path: str, data: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run_prompt(self, prompt: dict, timeout: float = 300.0) -> dict:
        """Queue an API-format prompt and wait for its history entry; raise with the server's error if it fails."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        if status != 200:
            raise RuntimeError(f"prompt rejected ({status}): {json.dumps(body)[:4000]}")
        pid = body["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{pid}")
            if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
                entry = hist[pid]
                if entry["status"].get("status_str") == "error":
                    raise RuntimeError(f"prompt failed: {json.dumps(entry['status'])[:4000]}")
                if entry["status"].get("completed"):
                    return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {pid} did not finish in {timeout}s")
