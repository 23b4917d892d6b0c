"""Secrets stay secret (DEBUG logs, config errors, nginx commands' environment); refused credentials are named.

Real ZooKeeper (the secured one for digest and SASL), the daemon as a
process at ``--log-level DEBUG`` so that kazoo prints its requests, and a
reload-mode ``test_cmd`` that records the environment it was given.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from kazoo.client import KazooClient
from kazoo.security import make_acl, make_digest_acl

from reloader.config import ConfigError, parse_config
from reloader.localenv.secure_zookeeper import SecureZooKeeper
from reloader.localenv.zookeeper import LocalZooKeeper
from tests.test_daemon import DaemonProcess, cluster, create_children, upstream_file, wait_until
from tests.test_daemon import daemons, files_dir  # noqa: F401 - fixtures
from tests.test_zk_security import (  # noqa: F401 - fixtures
    ALL_THREE, DIGEST_PASSWORD, DIGEST_USER, SASL_PASSWORD, SASL_USER, admin, base, protected_upstream,
    sasl_client_installed, secret_file, secure_zk,
)


def test_kazoo_debug_lines_never_carry_the_digest_credential_or_the_sasl_password(
    admin: KazooClient, base: str, secure_zk: SecureZooKeeper, daemons: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    path = f"{base}/app"
    # Readable only by a session holding both the digest credential and the SASL login.
    protected_upstream(admin, path, [make_digest_acl(DIGEST_USER, DIGEST_PASSWORD, read=True)])
    admin.create(f"{path}/10.0.0.4:80", b"", acl=[make_acl("sasl", SASL_USER, read=True)])
    log_file = tmp_path / "debug.log"
    daemon = daemons(
        cluster(secure_zk.hosts, {"app": path},
                auth={"scheme": "digest", "credential_env": "RELOADER_TEST_DIGEST"},
                sasl={"mechanism": "DIGEST-MD5", "username": SASL_USER, "password": SASL_PASSWORD}),
        log_level="DEBUG", env={"RELOADER_TEST_DIGEST": f"{DIGEST_USER}:{DIGEST_PASSWORD}"},
        extra_args=("--log-file", str(log_file)),
    )
    daemon.wait_file("app", upstream_file("app", *[f"server 10.0.0.{i}:80" for i in (1, 2, 3, 4)]))
    daemon.stop()
    text = log_file.read_text()
    # kazoo did print its requests (the filter has something to do)...
    assert "Sending request(xid=-4): Auth(auth_type=0, scheme='digest', auth='<redacted>')" in text, text[-3000:]
    assert "passwd=b'<redacted>'" in text
    # ...and no secret is left anywhere in the file.
    assert DIGEST_PASSWORD not in text
    assert SASL_PASSWORD not in text


def test_a_numeric_sasl_password_is_never_echoed_in_a_config_error() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"zk_servers": "127.0.0.1:2181", "zk_nodes": {"a": "/a"},
                      "sasl": {"mechanism": "DIGEST-MD5", "username": "u", "password": 918273645}}, source="t")
    (problem,) = raised.value.problems
    assert "918273645" not in problem
    assert problem == "sasl.password: must be a non-empty string (write it in quotes); got a number, " \
                      "whose value is not shown"


ENV_DUMP = """import os, sys
with open(sys.argv[1], "a") as out:
    out.write(repr(sorted(os.environ.items())) + "\\n")
"""


def test_nginx_commands_get_no_credential_variable_and_a_sighup_error_shows_no_password(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, daemons: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    credential = "reloader:a-digest-password"
    create_children(zk_client, f"{zk_root}/app1", {"10.0.0.1:80": b""})
    dump = tmp_path / "env.txt"
    script = tmp_path / "dump_env.py"
    script.write_text(ENV_DUMP)
    command = [sys.executable, str(script), str(dump)]
    config = cluster(zk.hosts, {"app1": f"{zk_root}/app1"},
                     auth={"scheme": "digest", "credential_env": "RELOADER_TEST_CREDENTIAL"},
                     nginx_reload={"test_cmd": command, "reload_cmd": command, "min_interval": 0})
    daemon = daemons(config, env={"RELOADER_TEST_CREDENTIAL": credential, "RELOADER_TEST_OTHER": "kept"})
    daemon.wait_file("app1", upstream_file("app1", "server 10.0.0.1:80"))
    zk_client.create(f"{zk_root}/app1/10.0.0.2:80")
    wait_until(lambda: dump.exists() and dump.read_text().count("\n") >= 2, "test_cmd and reload_cmd ran",
               details=daemon.log_tail)
    text = dump.read_text()
    assert "RELOADER_TEST_OTHER" in text, text  # the rest of the environment is passed on
    assert "RELOADER_TEST_CREDENTIAL" not in text and credential not in text

    # A SIGHUP with a numeric SASL password: refused, and the log says why without the value.
    bad = {**config, "sasl": {"mechanism": "DIGEST-MD5", "username": "u", "password": 55667788}}
    daemon.config_path.write_text(yaml.safe_dump(bad))
    daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    daemon.wait_log(r"config reload refused")
    assert daemon.log_lines(r"sasl\.password: must be a non-empty string"), daemon.log_tail()
    assert "55667788" not in daemon.log()
    daemon.stop()


# ---------------------------------------------------------------------------
# Credentials that ZooKeeper refuses, said in plain words
# ---------------------------------------------------------------------------


def test_a_noauth_read_says_whether_a_digest_credential_or_no_credential_is_at_fault(
    admin: KazooClient, base: str, secure_zk: SecureZooKeeper, daemons: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    path = f"{base}/app"
    protected_upstream(admin, path, [make_digest_acl(DIGEST_USER, DIGEST_PASSWORD, read=True)])
    credential = secret_file(tmp_path, "zk.cred", f"{DIGEST_USER}:Wr0ngPa55")
    wrong = daemons(cluster(secure_zk.hosts, {"app": path},
                            auth={"scheme": "digest", "credential_file": str(credential)}),
                    files_dir=tmp_path / "wrong")
    none = daemons(cluster(secure_zk.hosts, {"app": path}), files_dir=tmp_path / "none")
    child = f"{path}/10.0.0.3:80"
    wrong.wait_log(r"child '10\.0\.0\.3:80' skipped: .*NoAuth")
    line = wrong.log_lines(r"child '10\.0\.0\.3:80' skipped")[0]
    assert (f"the digest credential for user '{DIGEST_USER}' may be wrong (ZooKeeper does not check it at login) "
            f"or lacks the ACL on {child}") in line, line
    none.wait_log(r"child '10\.0\.0\.3:80' skipped: .*NoAuth")
    line = none.log_lines(r"child '10\.0\.0\.3:80' skipped")[0]
    assert f"this cluster has no auth: or sasl: credential, and the ACL on {child} requires one" in line, line
    assert "Wr0ngPa55" not in wrong.log(), "the credential itself is never logged"


def test_check_connect_authenticates_sasl(
    admin: KazooClient, secure_zk: SecureZooKeeper, tmp_path: Path,
) -> None:
    import subprocess

    from tests.test_daemon import ROOT

    def check(password: str) -> subprocess.CompletedProcess[str]:
        config = tmp_path / f"check-{password}.yaml"
        config.write_text(yaml.safe_dump({
            "zk_servers": secure_zk.hosts, "zk_session_timeout": "3s", "zk_nodes": {"app": "/sec"},
            "files_output_path": str(tmp_path / "out"),
            "sasl": {"mechanism": "DIGEST-MD5", "username": SASL_USER,
                     "password_file": str(secret_file(tmp_path, f"{password}.pw", password))},
        }))
        return subprocess.run([sys.executable, "-m", "reloader", "check", "--connect", "--config", str(config)],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    good = check(SASL_PASSWORD)
    assert good.returncode == 0, good
    assert f"cluster {secure_zk.hosts}: connected" in good.stdout
    bad = check("not-the-password")
    assert bad.returncode == 1, bad
    assert (f"cluster {secure_zk.hosts}: authentication failed: ZooKeeper refused this cluster's "
            "sasl:/auth: credentials") in bad.stdout, bad.stdout
    assert "not-the-password" not in bad.stdout + bad.stderr
