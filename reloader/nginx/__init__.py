"""nginx-side pieces shipped with the daemon: the Lua module and its snippet.

Guarantees: :data:`LUA_DIR` is the directory of the installed ``*.lua``
files (they are package data, so it holds in a wheel, an sdist install and
an editable work tree alike), and :data:`LUA_MODULES` names every module a
configuration refers to.
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
MAX_BODY: int = 65536

#: Most servers one upstream may have in the Lua module (mirrored by reloader_store.lua).
MAX_SERVERS: int = 2048
