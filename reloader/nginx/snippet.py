"""The nginx configuration that switches on the Lua dynamic upstreams.

Guarantees: :func:`lua_snippet` returns text that goes into the ``http``
block as it is -- the ``lua_package_path`` pointing at the installed Lua
files, the ``lua_shared_dict``, the loopback interface server and the
``include`` of the upstream files, and the variables that tell the
interface where its secret is and which ``Host`` is its own -- and :func:`load_module_lines` the
main-context lines for an nginx that does not load the module already
(Debian's package enables it through ``modules-enabled``; OpenResty has it
built in). :func:`stream_snippet` is the ``stream { }`` block that includes
the TCP upstreams' files (``<name>.stream``, see
reloader/outputs/files.py). Nothing here reads or writes nginx's files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from reloader.nginx import LUA_DIR, MAX_BODY, SHARED_DICT
from reloader.nginx.secret import default_path, path_for_config

if TYPE_CHECKING:
    from reloader.config import Config

DEFAULT_LISTEN: tuple[str, int] = ("127.0.0.1", 14444)
DEFAULT_INCLUDE_DIR: Path = Path("/etc/nginx/upstreams")
#: Room for roughly 20,000 servers in 1 MB; 16 MB is plenty and only touched pages cost memory.
DEFAULT_DICT_SIZE: str = "16m"

# Debian's module directory; lua needs the NDK module loaded first.
_DEBIAN_MODULES = Path("/usr/lib/nginx/modules")


def listen_from_url(url: str | None) -> tuple[str, int]:
    """The (host, port) the interface server listens on, from the daemon's ``lua_url``."""
    if not url:
        return DEFAULT_LISTEN
    parts = urlsplit(url)
    host = parts.hostname or DEFAULT_LISTEN[0]
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return host, port


def _listen_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host_values(host: str, port: int) -> list[str]:
    """The ``Host`` headers a client of ``http://host:port`` sends: the interface accepts only these."""
    values = [_listen_text(host, port)]
    if port == 80:
        values.append(f"[{host}]" if ":" in host else host)
    return values


def _quote(value: str) -> str:
    if "$" in value or any(ord(char) < 32 for char in value):
        # nginx would read "$name" as a variable inside "set".
        raise ValueError(f"{value!r}: a path in the Lua snippet cannot hold '$' or control characters")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def load_module_lines(modules_dir: Path = _DEBIAN_MODULES) -> str:
    """Main-context ``load_module`` lines for Debian's NDK and Lua modules."""
    return (
        f"load_module {modules_dir / 'ndk_http_module.so'};\n"
        f"load_module {modules_dir / 'ngx_http_lua_module.so'};\n"
    )


def lua_snippet(
    listen: tuple[str, int] = DEFAULT_LISTEN,
    include_dir: Path | None = DEFAULT_INCLUDE_DIR,
    lua_dir: Path = LUA_DIR,
    dict_size: str = DEFAULT_DICT_SIZE,
    access_log: bool = False,
    secret_file: Path | None = None,
) -> str:
    """The http-block text for Lua mode.

    ``include_dir`` None leaves the include line out (for callers that add
    their own). The interface answers loopback clients only, whatever
    address it listens on, and of those only the ones that send the secret
    in ``secret_file`` (default: ``.lua-secret`` in ``include_dir``) with the
    interface's own address as ``Host``.
    """
    host, port = listen
    if secret_file is None:
        secret_file = default_path(include_dir if include_dir is not None else DEFAULT_INCLUDE_DIR)
    lines = [
        "# nginx-upstream-reloader: dynamic upstreams through Lua. Goes inside http { }.",
        f"lua_package_path {_quote(str(lua_dir) + '/?.lua;;')};",
        f"lua_shared_dict {SHARED_DICT} {dict_size};",
        "",
        "# The interface the daemon POSTs to (lua_url). Keep it on loopback.",
        "server {",
        f"    listen {_listen_text(host, port)};",
        "    allow 127.0.0.1;",
        "    allow ::1;",
        "    deny all;",
        "    # Every request must carry X-Reloader-Token with the secret in this file (the daemon",
        "    # creates it, mode 0640), so nothing proxied here from 127.0.0.1 can use the interface;",
        "    # and its Host must be the interface's own, against browsers and DNS rebinding.",
        f"    set $reloader_secret_file {_quote(str(secret_file))};",
        f"    set $reloader_hosts {_quote(' '.join(host_values(host, port)))};",
        *([] if access_log else ["    access_log off;"]),
        f"    client_max_body_size {MAX_BODY // 1024}k;",
        f"    client_body_buffer_size {MAX_BODY // 1024}k;",
        "    location / {",
        "        content_by_lua_block { require(\"reloader_api\").handle() }",
        "    }",
        "    error_page 413 = @too_large;",
        "    location @too_large {",
        "        content_by_lua_block { require(\"reloader_api\").too_large() }",
        "    }",
        "}",
    ]
    if include_dir is not None:
        lines += [
            "",
            "# One upstream NAME { ... } block per upstream, written by the daemon.",
            f"include {_quote(str(include_dir) + '/*.upstream')};",
        ]
    return "\n".join(lines) + "\n"


def snippet_for_config(config: Config | None) -> str:
    """What ``nginx-upstream-reloader nginx-snippet --lua [--config FILE]`` prints.

    With a config, the interface listens where its ``lua_url`` points and the
    include line names its ``files_output_path``; without one, the defaults.
    """
    listen = listen_from_url(getattr(config, "lua_url", None)) if config is not None else DEFAULT_LISTEN
    include_dir = config.files_output_path if config is not None else DEFAULT_INCLUDE_DIR
    secret_file = path_for_config(config) if config is not None else default_path(DEFAULT_INCLUDE_DIR)
    return (
        "# Main context, unless Debian's modules-enabled already loads them (it does after\n"
        "# apt-get install libnginx-mod-http-lua; OpenResty has them built in):\n"
        + "".join(f"# {line}\n" for line in load_module_lines().splitlines())
        + "\n"
        + lua_snippet(listen=listen, include_dir=Path(include_dir), secret_file=secret_file)
    )


def stream_snippet(include_dir: Path = DEFAULT_INCLUDE_DIR, upstreams: tuple[str, ...] = ()) -> str:
    """What ``nginx-upstream-reloader nginx-snippet --stream [--config FILE]`` prints.

    A main-context ``stream { }`` block (beside ``http { }``, never inside it)
    that includes every TCP upstream's file, and one commented-out proxying
    server per upstream in ``upstreams`` to start from.
    """
    lines = [
        "# nginx-upstream-reloader: TCP upstreams (stream: true). Goes in the main context of",
        "# nginx.conf, beside http { }. Debian: apt-get install libnginx-mod-stream (its",
        "# modules-enabled file loads the module), or in the main context:",
        f"# load_module {_DEBIAN_MODULES / 'ngx_stream_module.so'};",
        "stream {",
        "    # One upstream NAME { ... } block per TCP upstream, written by the daemon. The http",
        "    # block's include DIR/*.upstream never picks these files up.",
        f"    include {_quote(str(include_dir) + '/*.stream')};",
    ]
    for name in upstreams or ("NAME",):
        lines += [
            "",
            "    # server {",
            "    #     listen PORT;",
            f"    #     proxy_pass {name};",
            "    # }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def stream_snippet_for_config(config: Config | None) -> str:
    """:func:`stream_snippet` for a config's ``files_output_path`` and TCP upstreams (defaults without one)."""
    if config is None:
        return stream_snippet()
    names = tuple(znode.upstream for znode in config.znodes if znode.stream)
    return stream_snippet(Path(config.files_output_path), names)
