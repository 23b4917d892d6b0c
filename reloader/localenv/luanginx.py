"""Stock nginx with Debian's Lua module, set up for the Lua dynamic upstreams.

Guarantees: :func:`lua_missing` says (with the install command) when the Lua
module, lua-resty-core or lua-cjson is absent; :class:`LuaNginx` is a
:class:`~reloader.localenv.nginx.LocalNginx` whose config loads Debian's NDK
and Lua modules and whose http block starts with the snippet that
``nginx-upstream-reloader nginx-snippet --lua`` prints, so tests and
benchmarks run exactly what users are told to configure. The interface's
secret is ``.lua-secret`` in ``upstream_dir`` (where a daemon whose
``files_output_path`` is that directory creates it); :meth:`LuaNginx.token`
creates it for callers without a daemon.
"""

from __future__ import annotations

import glob
from pathlib import Path

from reloader.nginx.secret import default_path, load_or_create
from reloader.nginx.snippet import DEFAULT_DICT_SIZE, load_module_lines, lua_snippet

from .nginx import LocalNginx

LUA_INSTALL_HINT = "apt-get install -y libnginx-mod-http-lua lua-resty-core lua-cjson"

_LUA_FILES: tuple[tuple[str, str], ...] = (
    ("libnginx-mod-http-lua", "/usr/lib/nginx/modules/ngx_http_lua_module.so"),
    ("libnginx-mod-http-ndk", "/usr/lib/nginx/modules/ndk_http_module.so"),
    ("lua-resty-core", "/usr/share/lua/5.1/resty/core.lua"),
    ("lua-cjson", "/usr/lib/*/lua/5.1/cjson.so"),
)


def lua_missing() -> str | None:
    """None when Debian's Lua module and its libraries are installed, else what is missing."""
    absent = [package for package, pattern in _LUA_FILES if not glob.glob(pattern)]
    if not absent:
        return None
    return f"nginx Lua support is not installed (missing {', '.join(absent)}); install it with: {LUA_INSTALL_HINT}"


class LuaNginx(LocalNginx):
    """LocalNginx that loads the Lua module and serves the Lua interface on ``api_port``.

    ``upstream_dir`` is included like the daemon's ``files_output_path``.
    """

    def __init__(self, api_port: int, upstream_dir: Path, binary: str = "nginx",
                 workdir: Path | None = None, dict_size: str = DEFAULT_DICT_SIZE) -> None:
        super().__init__(binary=binary, workdir=workdir)
        self.api_port = api_port
        self.upstream_dir = Path(upstream_dir)
        self.dict_size = dict_size
        self.secret_file = default_path(self.upstream_dir)

    def token(self) -> str:
        """The interface's secret, created in :attr:`secret_file` if there is none yet."""
        return load_or_create(self.secret_file)

    @property
    def api_url(self) -> str:
        """Base URL of the Lua interface (the daemon's ``lua_url``)."""
        return f"http://127.0.0.1:{self.api_port}"

    def render_config(self, http_block_body: str) -> str:
        snippet = lua_snippet(listen=("127.0.0.1", self.api_port), include_dir=self.upstream_dir,
                              dict_size=self.dict_size, secret_file=self.secret_file)
        return load_module_lines() + super().render_config(snippet + http_block_body)

    def write_config(self, http_block_body: str) -> Path:
        path = super().write_config(http_block_body)
        # The interface server's port comes from the snippet, not the body; it
        # goes last, so url() keeps naming the body's first server.
        self.listen_ports = [port for port in self.listen_ports if port != self.api_port] + [self.api_port]
        return path
