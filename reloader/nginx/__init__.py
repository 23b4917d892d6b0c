"""nginx-side pieces shipped with the daemon: the Lua module and its snippet.

Guarantees: :data:`LUA_DIR` is the directory of the installed ``*.lua``
files (they are package data, so it holds in a wheel, an sdist install and
an editable work tree alike), :data:`LUA_MODULES` names every module a
configuration refers to, and the limits here equal the Lua module's own
(tests/test_lua_module.py reads them from the Lua source and compares).
"""

from __future__ import annotations

from pathlib import Path

#: Directory of reloader_store.lua, reloader_api.lua and reloader_balancer.lua.
LUA_DIR: Path = Path(__file__).resolve().parent / "lua"

#: The lua_shared_dict the modules keep every upstream in (fixed in reloader_store.lua).
SHARED_DICT: str = "upstream_reloader"

#: The Lua modules, by their ``require`` names.
LUA_MODULES: tuple[str, ...] = ("reloader_store", "reloader_api", "reloader_balancer")

#: Upper limit of one update body, mirrored by the interface server's client_max_body_size.
#: Equal to MAX_BODY in reloader_store.lua: room for MAX_SERVERS servers with every field at its longest.
MAX_BODY: int = 1048576

#: Servers in one update at most; equal to MAX_SERVERS in reloader_store.lua.
MAX_SERVERS: int = 2048

#: Upstream names the Lua module stores at once; equal to MAX_UPSTREAMS in reloader_store.lua.
MAX_UPSTREAMS: int = 4096
