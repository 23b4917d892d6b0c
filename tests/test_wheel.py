"""The wheel installs anywhere: built, installed into a fresh venv outside the checkout, served by nginx.

The wheel is built from a copy of the source (``pip wheel --no-deps``, so the
checkout gets no ``build/``), installed with its dependencies into a new
venv in a temporary directory, and everything after that runs from there
with the checkout out of sight: the installed ``nginx-snippet --lua``
prints the nginx configuration, Debian's nginx with its Lua module accepts
it (``nginx -t``) and serves through the upstream file the installed
package renders, and the installed Lua output moves the traffic without a
reload.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reloader.localenv.backends import BackendPool, http_get
from reloader.localenv.luanginx import lua_missing
from reloader.localenv.nginx import LocalNginx, server_block
from reloader.localenv.ports import free_port
from reloader.nginx.snippet import load_module_lines
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)


class _SnippetNginx(LocalNginx):
    """nginx whose http block starts with a given snippet (the installed command's output)."""

    snippet = ""

    def render_config(self, http_block_body: str) -> str:
        return load_module_lines() + super().render_config(self.snippet + http_block_body)


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_wheel_installs_into_a_fresh_venv_and_its_snippet_serves(tmp_path: Path, nginx_bin: str) -> None:
    require(lua_missing())
    # Nothing of the checkout may leak in: no PYTHONPATH, and every command runs in tmp_path.
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "tests", "bench", "docs"))
    _run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(tmp_path / "dist")],
         tmp_path, env)
    wheels = list((tmp_path / "dist").glob("nginx_upstream_reloader-*.whl"))
    assert len(wheels) == 1

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    # The checkout's pip installs into the new venv: the wheel and its dependencies.
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--disable-pip-version-check",
          str(wheels[0])], tmp_path, env)
    shutil.rmtree(source)  # the installed package must not need its source
    installed = _run([str(python), "-c", "import reloader; print(reloader.__file__)"], tmp_path, env).strip()
    assert installed.startswith(str(venv)), installed

    with BackendPool(2, prefix="w") as pool:
        files = tmp_path / "upstreams"
        files.mkdir()
        api_port = free_port()
        config = tmp_path / "upstream_zk_nodes.conf"
        config.write_text(textwrap.dedent(f"""\
            zk_servers: 127.0.0.1:2181
            lua_url: http://127.0.0.1:{api_port}
            files_output_path: {files}
            zk_nodes:
              app: /services/app
            """))
        snippet = _run([str(venv / "bin" / "nginx-upstream-reloader"), "nginx-snippet", "--lua", "--config",
                        str(config)], tmp_path, env)
        lua_dir = Path(installed).parent / "nginx" / "lua"
        assert f'lua_package_path "{lua_dir}/?.lua;;";' in snippet
        assert str(ROOT) not in snippet
        assert f'include "{files}/*.upstream";' in snippet

        # The upstream file as the installed package renders it in Lua mode.
        render = ("import sys; from reloader.model import Server, Upstream; from reloader.render import "
                  "render_file_lua; port = int(sys.argv[1]); "
                  "sys.stdout.write(render_file_lua(Upstream('app', (Server('127.0.0.1', port),), live_count=1)))")
        (files / "app.upstream").write_text(_run([str(python), "-c", render, str(pool[0].port)], tmp_path, env))

        nginx = _SnippetNginx(nginx_bin, workdir=tmp_path / "nginx")
        nginx.snippet = snippet
        nginx.write_config(server_block(free_port(), "location / {\n    proxy_pass http://app;\n}\n"))
        test = subprocess.run(nginx.test_argv(), capture_output=True, text=True, timeout=30)
        assert test.returncode == 0, test.stderr
        nginx.start()
        try:
            assert {http_get(nginx.url(), timeout=3)[1].strip() for _ in range(4)} == {pool[0].name}
            workers = nginx.worker_pids()
            # The installed Lua output tells the installed Lua module the new set: no reload.
            # With the interface's secret, created where the snippet tells nginx to look, as the daemon does.
            post = ("import sys; from pathlib import Path; from reloader.model import Server, Upstream; "
                    "from reloader.nginx.secret import default_path, load_or_create; "
                    "from reloader.outputs.lua import LuaOutput; "
                    "token = load_or_create(default_path(Path(sys.argv[3]))); "
                    "out = LuaOutput(sys.argv[1], reconcile_interval=60.0, reassert_interval=60.0, "
                    "retry_interval=0.2, token=token); out.publish(Upstream('app', (Server('127.0.0.1', "
                    "int(sys.argv[2])),), live_count=1)); assert not out.pending, out.pending; out.close()")
            _run([str(python), "-c", post, f"http://127.0.0.1:{api_port}", str(pool[1].port), str(files)],
                 tmp_path, env)
            assert {http_get(nginx.url(), timeout=3)[1].strip() for _ in range(4)} == {pool[1].name}
            assert nginx.worker_pids() == workers
        finally:
            nginx.close()
