"""A local ZooKeeper with a TLS client port and SASL, for testing the daemon's security settings.

:class:`SecureZooKeeper` is a :class:`~reloader.localenv.zookeeper.LocalZooKeeper`
that additionally

* listens on a ``secureClientPort`` (127.0.0.1 only) with a server
  certificate made at run time by :class:`CertificateAuthority` (``openssl``,
  PEM files, an IP SAN for 127.0.0.1), and by default demands a client
  certificate signed by the same CA (``ssl.clientAuth=need``);
* accepts SASL DIGEST-MD5 logins for the users it is given (a JAAS file with
  ``DigestLoginModule`` and the ``SASLAuthenticationProvider``);
* keeps its plain ``clientPort``, so a test can set up znodes and ACLs with an
  ordinary client.

Guarantees: everything it creates (keys, certificates, the JAAS file) lives
inside its work directory; keys never leave it; both ports are on 127.0.0.1;
:meth:`SecureZooKeeper.start` returns only once a plain session connects and
the secure port accepts connections, and restarts keep both ports.

TLS needs Netty's server connection factory. Debian's ``zookeeper.jar``
manifest lists netty-buffer, -common, -handler and -transport but not the
jars Netty's SSL handler and event loops also need (netty-codec,
netty-resolver, netty-transport-native-unix-common), so they are added to
the classpath here.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .ports import free_port, port_accepts, port_is_free
from .zookeeper import (
    CLASSPATH,
    JAVA_DIR,
    JVM_FLAGS,
    MAIN_CLASS,
    LocalZooKeeper,
    ZooKeeperError,
    find_java,
    zookeeper_missing,
)

log = logging.getLogger(__name__)

#: The jars Netty's TLS server path needs beyond what zookeeper.jar's manifest brings.
NETTY_EXTRA_JARS: tuple[Path, ...] = (
    JAVA_DIR / "netty-codec.jar",
    JAVA_DIR / "netty-resolver.jar",
    JAVA_DIR / "netty-transport-native-unix-common.jar",
)

NETTY_FACTORY = "org.apache.zookeeper.server.NettyServerCnxnFactory"
SASL_PROVIDER = "org.apache.zookeeper.server.auth.SASLAuthenticationProvider"

#: Certificates are only needed for the length of a test run.
_CERT_DAYS = 2
_OPENSSL_TIMEOUT = 30.0


class CertificateError(RuntimeError):
    """openssl could not make a key or a certificate."""


def secure_zookeeper_missing() -> str | None:
    """None when a :class:`SecureZooKeeper` can run here, else what is missing and how to install it."""
    base = zookeeper_missing()
    if base is not None:
        return base
    missing = [str(jar) for jar in NETTY_EXTRA_JARS if not jar.is_file()]
    if shutil.which("openssl") is None:
        missing.append("openssl")
    if not missing:
        return None
    return (
        f"a TLS ZooKeeper cannot be run (missing: {', '.join(missing)}); "
        "install them with: apt-get install -y zookeeper libnetty-java openssl"
    )


def _openssl(*args: str, cwd: Path) -> None:
    try:
        subprocess.run(
            ["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=_OPENSSL_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.CalledProcessError as error:
        stderr = error.stderr.decode(errors="replace").strip()
        raise CertificateError(f"openssl {args[0]} failed: {stderr}") from None
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CertificateError(f"openssl {args[0]} failed: {error}") from None


def _subject_alt_names(names: Sequence[str]) -> str:
    """``IP:1.2.3.4,DNS:host`` for an openssl extension file."""
    entries = []
    for name in names:
        try:
            ipaddress.ip_address(name)
            entries.append(f"IP:{name}")
        except ValueError:
            entries.append(f"DNS:{name}")
    return ",".join(entries)


@dataclass(frozen=True)
class IssuedCertificate:
    """A PEM certificate and its unencrypted PKCS#8 key."""

    cert: Path
    key: Path

    def keystore(self, path: Path) -> Path:
        """Write key and certificate into one PEM file, the form ZooKeeper's PEM key store reads."""
        path.write_bytes(self.key.read_bytes() + self.cert.read_bytes())
        path.chmod(0o600)
        return path


class CertificateAuthority:
    """A throwaway CA in ``directory`` that issues server and client certificates.

    EC P-256 keys: they are made in milliseconds, and both Java's PEM
    reader and Python's ssl module take them.
    """

    def __init__(self, directory: Path, name: str = "test-ca") -> None:
        self.directory = Path(directory)
        self.name = name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cert = self.directory / f"{name}.pem"
        self.key = self.directory / f"{name}.key"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(self.key), "-out", str(self.cert), "-days", str(_CERT_DAYS),
            "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=self.directory,
        )
        self.key.chmod(0o600)

    def issue(self, name: str, *, alt_names: Sequence[str] = (), server: bool = False) -> IssuedCertificate:
        """A certificate for ``name`` signed by this CA.

        ``alt_names`` become the subject alternative names (IP addresses as
        IP SANs, the rest as DNS); ``server`` adds serverAuth to the usage.
        """
        cert = self.directory / f"{name}.pem"
        key = self.directory / f"{name}.key"
        csr = self.directory / f"{name}.csr"
        extensions = self.directory / f"{name}.ext"
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyAgreement",
            f"extendedKeyUsage={'serverAuth,clientAuth' if server else 'clientAuth'}",
        ]
        if alt_names:
            lines.append(f"subjectAltName={_subject_alt_names(alt_names)}")
        extensions.write_text("\n".join(lines) + "\n")
        _openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
            cwd=self.directory,
        )
        key.chmod(0o600)
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-CAcreateserial", "-out", str(cert), "-days", str(_CERT_DAYS), "-extfile", str(extensions),
            cwd=self.directory,
        )
        return IssuedCertificate(cert=cert, key=key)


def _jaas_quote(text: str) -> str:
    if '"' in text or "\\" in text or "\n" in text:
        raise ValueError(f"{text!r}: quotes, backslashes and newlines cannot go into a JAAS file")
    return f'"{text}"'


class SecureZooKeeper(LocalZooKeeper):
    """A standalone ZooKeeper with a plain port, a TLS port and SASL DIGEST-MD5 users.

    ``sasl_users`` maps user names to passwords for DIGEST-MD5 (none: SASL
    is off). ``client_auth`` is ZooKeeper's ``ssl.clientAuth``: ``need``
    (the default: a client certificate from the CA is required), ``want``
    or ``none``. The certificates are made on the first :meth:`start`, in
    ``workdir/tls``: :attr:`ca` (the CA certificate), :attr:`server_cert`
    (SAN IP 127.0.0.1) and :attr:`client_cert`.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        port: int | None = None,
        tick_time_ms: int = 200,
        secure_port: int | None = None,
        sasl_users: Mapping[str, str] | None = None,
        client_auth: str = "need",
    ) -> None:
        super().__init__(workdir=workdir, port=port, tick_time_ms=tick_time_ms)
        if client_auth not in ("need", "want", "none"):
            raise ValueError(f"client_auth must be need, want or none, not {client_auth!r}")
        self._secure_port_fixed = secure_port is not None
        self._secure_port = secure_port if secure_port is not None else free_port()
        self.sasl_users: dict[str, str] = dict(sasl_users or {})
        self.client_auth = client_auth
        self.tls_dir: Path = self.workdir / "tls"
        self.jaas_path: Path = self.workdir / "jaas.conf"
        self._authority: CertificateAuthority | None = None
        self._server_cert: IssuedCertificate | None = None
        self._client_cert: IssuedCertificate | None = None
        self._keystore: Path = self.tls_dir / "server-keystore.pem"

    # -- properties -------------------------------------------------------

    @property
    def secure_port(self) -> int:
        """The TLS client port."""
        return self._secure_port

    @property
    def secure_hosts(self) -> str:
        """The connect string for TLS clients, ``"127.0.0.1:SECURE_PORT"``."""
        return f"127.0.0.1:{self._secure_port}"

    @property
    def authority(self) -> CertificateAuthority:
        """The CA that signed the server and client certificates (made on first start)."""
        if self._authority is None:
            raise ZooKeeperError("the certificates are made by start(); start the server first")
        return self._authority

    @property
    def ca(self) -> Path:
        """The CA certificate (PEM) clients verify the server with."""
        return self.authority.cert

    @property
    def server_cert(self) -> IssuedCertificate:
        """The server's certificate (SAN IP 127.0.0.1) and key."""
        if self._server_cert is None:
            raise ZooKeeperError("the certificates are made by start(); start the server first")
        return self._server_cert

    @property
    def client_cert(self) -> IssuedCertificate:
        """A client certificate the server accepts, and its key."""
        if self._client_cert is None:
            raise ZooKeeperError("the certificates are made by start(); start the server first")
        return self._client_cert

    # -- set-up -------------------------------------------------------------

    def make_certificates(self) -> None:
        """Make the CA, the server certificate (SAN IP 127.0.0.1) and a client certificate, once.

        Made again only if the files are gone (stop() removes a work
        directory it created); clients holding the old ones must reload them.
        """
        if self._authority is not None and self._keystore.is_file():
            return
        began = time.monotonic()
        authority = CertificateAuthority(self.tls_dir, "zk-test-ca")
        server = authority.issue("zk-server", alt_names=("127.0.0.1",), server=True)
        client = authority.issue("zk-client")
        server.keystore(self._keystore)
        self._authority, self._server_cert, self._client_cert = authority, server, client
        log.debug("certificates for %s made in %.2f s", self.secure_hosts, time.monotonic() - began)

    def write_jaas(self) -> Path | None:
        """Write the server's JAAS file for the DIGEST-MD5 users; None when there are none."""
        if not self.sasl_users:
            return None
        users = "\n".join(
            f"    user_{name}={_jaas_quote(password)}" for name, password in sorted(self.sasl_users.items())
        )
        self.jaas_path.write_text(
            "Server {\n    org.apache.zookeeper.server.auth.DigestLoginModule required\n" + users + ";\n};\n"
        )
        self.jaas_path.chmod(0o600)
        return self.jaas_path

    def write_config(self) -> Path:
        """``zoo.cfg`` of the plain server plus the TLS port, its key and trust stores, and SASL."""
        path = super().write_config()
        lines = [
            f"secureClientPort={self._secure_port}",
            "secureClientPortAddress=127.0.0.1",
            # The NIO factory has no TLS; Netty serves both ports.
            f"serverCnxnFactory={NETTY_FACTORY}",
            f"ssl.keyStore.location={self._keystore.resolve()}",
            "ssl.keyStore.type=PEM",
            f"ssl.trustStore.location={self.ca.resolve()}",
            "ssl.trustStore.type=PEM",
            f"ssl.clientAuth={self.client_auth}",
        ]
        if self.sasl_users:
            lines.append(f"authProvider.1={SASL_PROVIDER}")
        with path.open("a") as handle:
            handle.write("\n".join(lines) + "\n")
        return path

    def command(self) -> list[str]:
        java = find_java() or "java"
        classpath = ":".join(str(jar) for jar in (*CLASSPATH, *NETTY_EXTRA_JARS))
        flags = list(JVM_FLAGS)
        jaas = self.write_jaas()
        if jaas is not None:
            flags.append(f"-Djava.security.auth.login.config={jaas.resolve()}")
        return [java, *flags, "-cp", classpath, MAIN_CLASS, str(self.config_path.resolve())]

    # -- lifecycle ------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        """Make the certificates if need be, start the server, and wait for both ports."""
        if self.running:
            return
        missing = secure_zookeeper_missing()
        if missing:
            raise ZooKeeperError(missing)
        if not self._secure_port_fixed and not self._started_once and not port_is_free(self._secure_port):
            self._secure_port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.make_certificates()
        began = time.monotonic()
        super().start(timeout=timeout)
        # Both factories are bound before sessions are served, but wait on the
        # condition rather than rely on that order.
        deadline = began + timeout
        while not port_accepts(self._secure_port):
            if not self.running or time.monotonic() >= deadline:
                self._terminate()
                raise ZooKeeperError(
                    f"ZooKeeper's TLS port {self.secure_hosts} does not accept connections; "
                    f"log tail ({self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(0.05)
        self.last_start_seconds = time.monotonic() - began

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SecureZooKeeper {self.hosts} tls={self.secure_hosts} {state} workdir={self.workdir}>"
