"""The environment of the commands the daemon runs (``nginx -t``, ``nginx -s reload``): without its secrets.

A ``credential_env`` variable holds a ZooKeeper credential; the commands
that test and reload nginx have no use for it, and a wrapper script or a
core dump of theirs would only spread it. Guarantees:

* :func:`secret_values` is every secret value the config holds (digest
  credentials, whatever file or variable they came from, and SASL
  passwords);
* :func:`child_environment` is a copy of the environment without every
  variable whose value is one of those secrets (or, for a secret of at least
  :data:`CONTAINED_MIN` characters, contains it), whatever its name;
* :func:`without_secrets` wraps a ``subprocess.run``-like callable so that
  every command it runs gets that environment, computed from the config in
  force at the time of the call (a SIGHUP may change the credentials).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from reloader.config import Config

#: A secret this long is also looked for inside other values (a shorter one could match by chance).
CONTAINED_MIN = 8


def secret_values(config: Config) -> frozenset[str]:
    """Every credential and password of ``config``'s clusters."""
    secrets: set[str] = set()
    for cluster in config.clusters:
        if cluster.auth is not None:
            secrets.add(cluster.auth.credential)
        if cluster.sasl is not None and cluster.sasl.get("password"):
            secrets.add(cluster.sasl["password"])
    return frozenset(secret for secret in secrets if secret)


def _holds(value: str, secrets: Iterable[str]) -> bool:
    stripped = value.strip()
    return any(stripped == secret or (len(secret) >= CONTAINED_MIN and secret in value) for secret in secrets)


def child_environment(secrets: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default: this process's) without the variables that hold a secret."""
    secrets = [secret for secret in secrets if secret]
    env = os.environ if environ is None else environ
    return {name: value for name, value in env.items() if not _holds(value, secrets)}


def without_secrets(run: Callable[..., Any], config: Callable[[], Config]) -> Callable[..., Any]:
    """``run`` with ``env=`` set to the environment without the secrets of ``config()`` (read at each call)."""

    def run_clean(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("env", child_environment(secret_values(config())))
        return run(*args, **kwargs)

    return run_clean
