"""ZooKeeper digest auth, TLS and SASL, end to end: the daemon as a process against a real secured ZooKeeper.

One :class:`~reloader.localenv.secure_zookeeper.SecureZooKeeper` serves the
module: a plain port (used to set up znodes and ACLs), a TLS port whose
certificates were made by openssl at start-up (client certificates
required), and a SASL DIGEST-MD5 user. Every test keeps to its own base
path. Every wait is a condition under a deadline; a failure to connect is
proved by the daemon's own log line for the failed attempt, then by the
file still being absent.
"""

from __future__ import annotations

import importlib.util
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.security import OPEN_ACL_UNSAFE, make_acl, make_digest_acl

from reloader.config import kazoo_arguments, parse_config
from reloader.localenv.secure_zookeeper import CertificateAuthority, SecureZooKeeper, secure_zookeeper_missing
from tests.conftest import require
from tests.test_daemon import DaemonProcess, cluster, daemons, files_dir, upstream_file, wait_until  # noqa: F401 - fixtures

DIGEST_USER, DIGEST_PASSWORD = "reader", "digest-secret"
SASL_USER, SASL_PASSWORD = "reloader", "sasl-secret"
#: How long a test waits for a connection that must fail to be reported as failed.
FAIL_WAIT = 10.0


@pytest.fixture(scope="module")
def secure_zk() -> Iterator[SecureZooKeeper]:
    require(secure_zookeeper_missing())
    server = SecureZooKeeper(sasl_users={SASL_USER: SASL_PASSWORD})
    began = time.monotonic()
    server.start()
    print(f"SecureZooKeeper (certificates + JVM) ready in {time.monotonic() - began:.2f} s")
    yield server
    server.stop()


@pytest.fixture
def sasl_client_installed() -> None:
    """kazoo's SASL needs pure-sasl (an install requirement); skip, or fail in CI, without it."""
    require(None if importlib.util.find_spec("puresasl") else "pure-sasl is not installed: .venv/bin/pip install pure-sasl")


@pytest.fixture
def admin(secure_zk: SecureZooKeeper, sasl_client_installed: None) -> Iterator[KazooClient]:
    """A plain-port client holding both credentials, so it can create and clean up protected znodes."""
    client = KazooClient(
        hosts=secure_zk.hosts,
        timeout=4,
        auth_data=[("digest", f"{DIGEST_USER}:{DIGEST_PASSWORD}")],
        sasl_options={"mechanism": "DIGEST-MD5", "username": SASL_USER, "password": SASL_PASSWORD},
    )
    client.start(timeout=10)
    yield client
    client.stop()
    client.close()


@pytest.fixture
def base(admin: KazooClient) -> str:
    path = f"/sec/{uuid.uuid4().hex[:8]}"
    admin.ensure_path(path)
    return path


def secret_file(directory: Path, name: str, secret: str) -> Path:
    path = directory / name
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


def protected_upstream(admin: KazooClient, path: str, acl: list[Any]) -> None:
    """Two open children and one (10.0.0.3:80) readable only under ``acl``."""
    admin.create(path, b"", acl=OPEN_ACL_UNSAFE, makepath=True)
    admin.create(f"{path}/10.0.0.1:80", b"")
    admin.create(f"{path}/10.0.0.2:80", b"")
    admin.create(f"{path}/10.0.0.3:80", b"", acl=acl)


OPEN_ONLY = upstream_file("app", "server 10.0.0.1:80", "server 10.0.0.2:80")
ALL_THREE = upstream_file("app", "server 10.0.0.1:80", "server 10.0.0.2:80", "server 10.0.0.3:80")


def timed_file(daemon: DaemonProcess, upstream: str, expected: str, began: float) -> float:
    """Wait for the file; return the seconds from the daemon's start to it."""
    daemon.wait_file(upstream, expected, timeout=15)
    return time.monotonic() - began


# ---------------------------------------------------------------------------
# 1. digest auth
# ---------------------------------------------------------------------------


def test_digest_acl_child_is_skipped_without_auth(
    admin: KazooClient, base: str, secure_zk: SecureZooKeeper, daemons: Callable[..., DaemonProcess]
) -> None:
    path = f"{base}/app"
    protected_upstream(admin, path, [make_digest_acl(DIGEST_USER, DIGEST_PASSWORD, read=True)])
    daemon = daemons(cluster(secure_zk.hosts, {"app": path}))
    daemon.wait_file("app", OPEN_ONLY)
    lines = daemon.wait_log(r"child '10\.0\.0\.3:80' skipped: .*NoAuth")
    assert path in lines[0], lines


@pytest.mark.parametrize("source", ["credential_file", "credential_env"])
def test_digest_auth_reads_protected_child(
    admin: KazooClient, base: str, secure_zk: SecureZooKeeper, daemons: Callable[..., DaemonProcess],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str,
) -> None:
    path = f"{base}/app"
    protected_upstream(admin, path, [make_digest_acl(DIGEST_USER, DIGEST_PASSWORD, read=True)])
    credential = f"{DIGEST_USER}:{DIGEST_PASSWORD}"
    if source == "credential_file":
        auth = {"scheme": "digest", "credential_file": str(secret_file(tmp_path, "zk.cred", credential))}
    else:
        # The daemon inherits the test's environment.
        monkeypatch.setenv("RELOADER_TEST_ZK_CREDENTIAL", credential)
        auth = {"scheme": "digest", "credential_env": "RELOADER_TEST_ZK_CREDENTIAL"}
    daemon = daemons(cluster(secure_zk.hosts, {"app": path}, auth=auth))
    daemon.wait_file("app", ALL_THREE)
    assert not daemon.log_lines(r"skipped"), daemon.log_tail()


def test_wrong_digest_credential_still_skips_the_child(
    admin: KazooClient, base: str, secure_zk: SecureZooKeeper, daemons: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    # ZooKeeper accepts any digest credential (it only hashes it), so a wrong
    # password is not a failed login: the ACL'd child stays unreadable.
    path = f"{base}/app"
    protected_upstream(admin, path, [make_digest_acl(DIGEST_USER, DIGEST_PASSWORD, read=True)])
    auth = {"scheme": "digest", "credential_file": str(secret_file(tmp_path, "zk.cred", f"{DIGEST_USER}:wrong"))}
    daemon = daemons(cluster(secure_zk.hosts, {"app": path}, auth=auth))
    daemon.wait_file("app", OPEN_ONLY)
    daemon.wait_log(r"child '10\.0\.0\.3:80' skipped: .*NoAuth")


# ---------------------------------------------------------------------------
# 2. TLS
# ---------------------------------------------------------------------------


def tls_settings(secure_zk: SecureZooKeeper, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "ca": str(secure_zk.ca),
        "cert": str(secure_zk.client_cert.cert),
        "key": str(secure_zk.client_cert.key),
    }
    settings.update(overrides)
    return {key: value for key, value in settings.items() if value is not None}


def open_upstream(admin: KazooClient, path: str) -> None:
    admin.create(path, b"", makepath=True)
    admin.create(f"{path}/10.0.0.1:80", b"")


ONE = upstream_file("app", "server 10.0.0.1:80")


def test_tls_with_hostname_verification_connects(
    admin: KazooClient, base: str, secure_zk: SecureZooKeeper, daemons: Callable[..., DaemonProcess]
) -> None:
    # verify_hostname defaults to true; the server certificate has IP SAN 127.0.0.1.
    path = f"{base}/app"
    open_upstream(admin, path)
    began = time.monotonic()
    daemon = daemons(cluster(secure_zk.secure_hosts, {"app": path}, tls=tls_settings(secure_zk)))
    took = timed_file(daemon, "app", ONE, began)
    print(f"daemon start to file over TLS: {took:.2f} s")
    # The server saw the client certificate.
    wait_until(lambda: "Authenticated Id 'CN=zk-client' for Scheme 'x509'" in secure_zk.log_tail(400),
               "the server to log the x509 client", details=secure_zk.log_tail)


NOT_CONNECTED = r"cluster .*: not connected [0-9]+ s after start"


def test_tls_with_wrong_ca_does_not_connect_and_keeps_the_file(
    admin: KazooClient, base: str, secure_zk: SecureZooKeeper, daemons: Callable[..., DaemonProcess],
    tmp_path: Path, files_dir: Path,
) -> None:
    path = f"{base}/app"
    open_upstream(admin, path)
    # What an earlier run left: a frozen cluster must leave it as it is.
    files_dir.mkdir(parents=True)
    earlier = upstream_file("app", "server 10.9.9.9:80")
    (files_dir / "app.upstream").write_text(earlier)
    other = CertificateAuthority(tmp_path / "other-ca", "other-ca")
    # DEBUG lets kazoo's own line for each failed handshake into the log.
    daemon = daemons(cluster(secure_zk.secure_hosts, {"app": path}, tls=tls_settings(secure_zk, ca=str(other.cert))),
                     log_level="DEBUG")
    # Two failed handshakes: the daemon keeps trying, and keeps failing.
    daemon.wait_log(r"CERTIFICATE_VERIFY_FAILED\] certificate verify failed: unable to get local issuer",
                    count=2, timeout=FAIL_WAIT)
    daemon.wait_log(NOT_CONNECTED, timeout=FAIL_WAIT)
    # The warning itself names the TLS failure, at any log level.
    daemon.wait_log(NOT_CONNECTED + r" \(.*TLS handshake failed: CERTIFICATE_VERIFY_FAILED", timeout=FAIL_WAIT)
    assert daemon.read("app") == earlier
    assert not daemon.log_lines(r"connected; reading"), daemon.log_tail()


def test_tls_hostname_mismatch_is_refused_unless_verification_is_off(
    admin: KazooClient, base: str, secure_zk: SecureZooKeeper, daemons: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    # The certificate names 127.0.0.1 only; "localhost" is not in it.
    path = f"{base}/app"
    open_upstream(admin, path)
    hosts = f"localhost:{secure_zk.secure_port}"
    strict = daemons(cluster(hosts, {"app": path}, tls=tls_settings(secure_zk)),
                     files_dir=tmp_path / "strict", log_level="DEBUG")
    strict.wait_log(r"certificate verify failed: Hostname mismatch, certificate is not valid for 'localhost'",
                    timeout=FAIL_WAIT)
    lax = daemons(cluster(hosts, {"app": path}, tls=tls_settings(secure_zk, verify_hostname=False)),
                  files_dir=tmp_path / "lax")
    lax.wait_file("app", ONE)
    strict.wait_log(NOT_CONNECTED, timeout=FAIL_WAIT)
    assert strict.read("app") is None
    assert not strict.log_lines(r"connected; reading"), strict.log_tail()


def test_tls_without_client_certificate_is_refused(
    admin: KazooClient, base: str, secure_zk: SecureZooKeeper, daemons: Callable[..., DaemonProcess]
) -> None:
    # The server demands a client certificate (ssl.clientAuth=need).
    path = f"{base}/app"
    open_upstream(admin, path)
    tls = tls_settings(secure_zk, cert=None, key=None)
    daemon = daemons(cluster(secure_zk.secure_hosts, {"app": path}, tls=tls), log_level="DEBUG")
    daemon.wait_log(r"SSLV3_ALERT_BAD_CERTIFICATE|CERTIFICATE_REQUIRED", timeout=FAIL_WAIT)
    daemon.wait_log(NOT_CONNECTED, timeout=FAIL_WAIT)
    assert daemon.read("app") is None
    assert not daemon.log_lines(r"connected; reading"), daemon.log_tail()


def test_tls_session_survives_a_zookeeper_restart(
    tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    # A server of its own: the shared one must not be restarted. Every
    # reconnect makes a new TLS handshake, and a change made while the daemon
    # was away must reach the file once it is back.
    server = SecureZooKeeper(workdir=tmp_path / "zk")
    server.start()
    try:
        admin = server.client()
        try:
            path = "/app"
            open_upstream(admin, path)
        finally:
            admin.stop()
            admin.close()
        daemon = daemons(cluster(server.secure_hosts, {"app": path}, tls=tls_settings(server)))
        daemon.wait_file("app", ONE)
        server.kill()
        daemon.wait_log(r"session (SUSPENDED|LOST)")
        began = time.monotonic()
        server.start()
        admin = server.client()
        try:
            admin.create(f"{path}/10.0.0.2:80", b"")
        finally:
            admin.stop()
            admin.close()
        daemon.wait_file("app", upstream_file("app", "server 10.0.0.1:80", "server 10.0.0.2:80"), timeout=15)
        print(f"TLS reconnect: server restarted to file updated in {time.monotonic() - began:.2f} s")
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# 3. SASL DIGEST-MD5
# ---------------------------------------------------------------------------


def test_sasl_digest_md5_reads_protected_child(
    admin: KazooClient, base: str, secure_zk: SecureZooKeeper, daemons: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    path = f"{base}/app"
    protected_upstream(admin, path, [make_acl("sasl", SASL_USER, read=True)])
    without = daemons(cluster(secure_zk.hosts, {"app": path}), files_dir=tmp_path / "without")
    sasl = {"mechanism": "DIGEST-MD5", "username": SASL_USER,
            "password_file": str(secret_file(tmp_path, "sasl.pw", SASL_PASSWORD))}
    began = time.monotonic()
    daemon = daemons(cluster(secure_zk.hosts, {"app": path}, sasl=sasl), files_dir=tmp_path / "with")
    took = timed_file(daemon, "app", ALL_THREE, began)
    print(f"daemon start to file with SASL: {took:.2f} s")
    without.wait_file("app", OPEN_ONLY)
    without.wait_log(r"child '10\.0\.0\.3:80' skipped: .*NoAuth")


def test_sasl_wrong_password_does_not_connect(
    admin: KazooClient, base: str, secure_zk: SecureZooKeeper, daemons: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    path = f"{base}/app"
    open_upstream(admin, path)
    sasl = {"mechanism": "DIGEST-MD5", "username": SASL_USER, "password": "wrong"}
    daemon = daemons(cluster(secure_zk.hosts, {"app": path}, sasl=sasl))
    # kazoo reports CONNECTED before the SASL exchange, then AUTH_FAILED,
    # which it treats as final: it stops reconnecting. The daemon reads
    # nothing on that CONNECTED: it waits for the watches to be settled.
    daemon.wait_log(r"session LOST", timeout=FAIL_WAIT)
    # The daemon says so in plain words, and does not give up for good as kazoo does.
    daemon.wait_log(r"ZooKeeper refused this cluster's credentials \(authentication failed\); check its "
                    r"auth:/sasl: settings; trying again in 30 s", timeout=FAIL_WAIT)
    assert daemon.read("app") is None
    assert not daemon.log_lines(r"resynced .*; thawed"), daemon.log_tail()


# ---------------------------------------------------------------------------
# Connect times
# ---------------------------------------------------------------------------

#: A secured connect slower than this on one local server means something is wrong (a retry, a stall).
CONNECT_LIMIT = 3.0


def test_connect_times(secure_zk: SecureZooKeeper, sasl_client_installed: None, tmp_path: Path) -> None:
    """Time sessions built by kazoo_arguments, plain and secured, as the daemon builds them; print the medians."""
    password_file = secret_file(tmp_path, "sasl.pw", SASL_PASSWORD)
    credential_file = secret_file(tmp_path, "zk.cred", f"{DIGEST_USER}:{DIGEST_PASSWORD}")
    nodes = {"app": "/sec"}
    variants: dict[str, dict[str, Any]] = {
        "plain": {"zk_servers": secure_zk.hosts, "zk_nodes": nodes},
        "digest": {"zk_servers": secure_zk.hosts, "zk_nodes": nodes,
                   "auth": {"scheme": "digest", "credential_file": str(credential_file)}},
        "sasl": {"zk_servers": secure_zk.hosts, "zk_nodes": nodes,
                 "sasl": {"mechanism": "DIGEST-MD5", "username": SASL_USER, "password_file": str(password_file)}},
        "tls": {"zk_servers": secure_zk.secure_hosts, "zk_nodes": nodes, "tls": tls_settings(secure_zk)},
    }
    medians: dict[str, float] = {}
    for name, data in variants.items():
        (config_cluster,) = parse_config(data, source=f"{name}.yaml").clusters
        times = []
        for _ in range(5):
            client = KazooClient(timeout=4, connection_retry=None, **kazoo_arguments(config_cluster))
            began = time.monotonic()
            try:
                client.start(timeout=CONNECT_LIMIT)
                client.get_children("/")  # the session is usable, auth included
                times.append(time.monotonic() - began)
            finally:
                client.stop()
                client.close()
        times.sort()
        medians[name] = times[len(times) // 2]
        assert times[-1] < CONNECT_LIMIT, (name, times)
    print("connect + first read, median of 5: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in medians.items()))
