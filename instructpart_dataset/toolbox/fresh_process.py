"""Run code, or serve a Gradio app, the way a user of a Hub repo does: in a fresh interpreter that cannot import
this project (its packages may be installed editable in the venv), offline, with empty Hugging Face caches.

The one helper shared by upload.py's verification, the tests and the benchmarks:

    run_isolated(code, cwd, what, args=())       -> the JSON object the code prints on its last line
    with serve_isolated(app_py, env=...) as app:  -> app.url (http://127.0.0.1:PORT/) while it serves, app.output()
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request

# The folder that holds this project's packages: in a source checkout it is the checkout (where upload.py sits too)
# and is dropped from the fresh interpreter's path; in an installed copy it is site-packages, which stays.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DROPPED_PATHS = ("", ".") + ((PROJECT_ROOT,) if os.path.isfile(os.path.join(PROJECT_ROOT, "upload.py")) else ())
OUR_PACKAGES = ("instructpart_dataset", "instructpart_metric", "pisa_model")

_PRELUDE = f"""
import sys
class _NoProjectImports:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {OUR_PACKAGES!r}:
            raise ModuleNotFoundError(name + " is not importable here: this check runs as a user of the Hub repo")
sys.meta_path.insert(0, _NoProjectImports())
sys.path = [p for p in sys.path if p not in {_DROPPED_PATHS!r}]
"""


class IsolatedRunError(Exception):
    """A one-line reason the isolated code failed: what was checked and the last line it printed to stderr."""


def _isolated_env(caches: str, extra: dict | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    # Fresh caches: datasets keys a local folder's cache on file names and mtimes, so a stale cache could make a
    # broken stage look fine; remote code must be copied from the stage, not found in a cache.
    env.update(
        HF_DATASETS_CACHE=os.path.join(caches, "datasets"),
        HF_MODULES_CACHE=os.path.join(caches, "modules"),
        GRADIO_TEMP_DIR=os.path.join(caches, "gradio"),
    )
    env.update(extra or {})
    return env


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or ["(no output)"])[-1]


def run_isolated(code: str, cwd: str, what: str, args=(), env: dict | None = None, timeout: float = 900) -> dict:
    """Run `code` (dedented) with `sys.argv[1:] == args` in a fresh interpreter that cannot import this project;
    it must print one JSON object on its last stdout line, which is returned."""
    caches = tempfile.mkdtemp(prefix="isolated-caches-")
    script = _PRELUDE + textwrap.dedent(code)
    try:
        result = subprocess.run(
            [sys.executable, "-c", script, *map(str, args)],
            cwd=cwd,
            env=_isolated_env(caches, env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise IsolatedRunError(f"{what}: no answer within {timeout:.0f} s") from None
    finally:
        shutil.rmtree(caches, ignore_errors=True)
    if result.returncode != 0:
        raise IsolatedRunError(f"{what}: {_last_line(result.stderr)}")
    try:
        return json.loads(_last_line(result.stdout))
    except json.JSONDecodeError:
        raise IsolatedRunError(f"{what}: printed no JSON result ({_last_line(result.stdout)!r})") from None


def free_port() -> int:
    """A port free on the loopback interface now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServedApp:
    """A running app: its base URL and what it has printed (stdout and stderr together)."""

    def __init__(self, url: str, log):
        self.url, self._log, self._final = url, log, None

    def output(self) -> str:
        if self._final is not None:
            return self._final
        self._log.flush()
        with open(self._log.name) as f:
            return f.read()


@contextlib.contextmanager
def serve_isolated(app_file: str, env: dict | None = None, startup_timeout: float = 180, isolated: bool = True):
    """Start `python app_file` as a Space runs it (from its folder, `GRADIO_SERVER_NAME/PORT` set) on a free
    loopback port and yield a `ServedApp` once it answers; stop it (SIGINT, then SIGKILL) on exit.

    `isolated=False` keeps this project importable (to serve the package's own app module)."""
    port = free_port()
    caches = tempfile.mkdtemp(prefix="isolated-caches-")
    app_file = os.path.abspath(app_file)
    launcher = f"import runpy, sys\nsys.argv = [{app_file!r}]\nrunpy.run_path({app_file!r}, run_name='__main__')\n"
    server_env = {"GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), **(env or {})}
    log = open(os.path.join(caches, "server.log"), "w")
    process = subprocess.Popen(
        [sys.executable, "-c", (_PRELUDE if isolated else "") + launcher],
        cwd=os.path.dirname(app_file),
        env=_isolated_env(caches, server_env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopping it stops anything it started
    )
    url = f"http://127.0.0.1:{port}/"
    served = ServedApp(url, log)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise IsolatedRunError(
                    f"{app_file} exited with code {process.returncode}: {_last_line(served.output())}"
                )
            try:
                with urllib.request.urlopen(url + "gradio_api/info", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise IsolatedRunError(
                    f"{app_file} did not serve {url} within {startup_timeout:.0f} s: {_last_line(served.output())}"
                )
            time.sleep(0.5)
        yield served
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        served._final = served.output()
        log.close()
        shutil.rmtree(caches, ignore_errors=True)
