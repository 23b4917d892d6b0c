"""Stock nginx run in a private prefix, and a fast check of upstream files.

Everything nginx writes -- pid file, logs, lock file and all ``*_temp_path``
directories -- is placed under one prefix directory, and every command gets
``-p PREFIX -e ERROR_LOG -c CONF``, so no root-owned path (``/run``,
``/var/log/nginx``, ``/var/lib/nginx``) is ever touched.

Two things to know about stock nginx:

* ``nginx -t`` resolves host names in ``upstream { server NAME:PORT; }``
  lines, so a name that does not resolve fails the check ("host not found
  in upstream"), not just bad syntax.
* Run as root, the master starts its workers as ``nobody`` unless told
  otherwise; see :func:`main_context`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from .ports import port_accepts

log = logging.getLogger(__name__)

INSTALL_HINT = "apt-get install -y nginx"
#: Debian builds the stream module (TCP upstreams) as a module of its own.
STREAM_INSTALL_HINT = "apt-get install -y libnginx-mod-stream"

# nginx -t takes milliseconds; this only guards against a wedged binary.
_COMMAND_TIMEOUT = 30.0

# ``listen 8080;``, ``listen 127.0.0.1:8080 default_server;``, ``listen [::1]:80;``
_LISTEN = re.compile(r"\blisten\s+(?:\S*:)?(\d+)[\s;]")


class NginxError(RuntimeError):
    """nginx could not be found, started, reloaded or stopped."""


class NginxConfigError(NginxError):
    """nginx rejected a configuration; ``output`` is what nginx printed."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


def find_nginx(binary: str = "nginx") -> str | None:
    """Return the path of the nginx binary, looking in PATH and /usr/sbin.

    ``binary`` may be a bare name or a path. /usr/sbin is searched too
    because it is often missing from a non-root PATH.
    """
    if os.sep in binary:
        return binary if os.access(binary, os.X_OK) else None
    found = shutil.which(binary)
    if found:
        return found
    candidate = Path("/usr/sbin") / binary
    return str(candidate) if os.access(candidate, os.X_OK) else None


def nginx_missing(binary: str = "nginx") -> str | None:
    """Return None when nginx can be run, else a message naming the install command."""
    if find_nginx(binary) is not None:
        return None
    return (
        f"nginx is not available ({binary!r} not in PATH or /usr/sbin); "
        f"install it with: {INSTALL_HINT}"
    )


def _build_options(binary: str) -> list[str]:
    """The ``configure arguments`` that ``nginx -V`` prints."""
    nginx = find_nginx(binary)
    if nginx is None:
        raise NginxError(nginx_missing(binary) or f"{binary} not found")
    result = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=_COMMAND_TIMEOUT,
                            stdin=subprocess.DEVNULL)
    return (result.stdout + result.stderr).split()


def stream_module_lines(binary: str = "nginx") -> str:
    """Main-context lines that give ``binary`` the stream module: "" when it is built in.

    Debian builds it as a dynamic module (``--with-stream=dynamic``), loaded
    from its modules directory; raises NginxError naming the package when
    nginx has no stream module at all.
    """
    options = _build_options(binary)
    if "--with-stream" in options:
        return ""
    if "--with-stream=dynamic" not in options:
        raise NginxError(f"{binary} was built without the stream module (TCP upstreams)")
    modules = next((o.split("=", 1)[1] for o in options if o.startswith("--modules-path=")), "/usr/lib/nginx/modules")
    module = Path(modules) / "ngx_stream_module.so"
    if not module.is_file():
        raise NginxError(f"{module} is missing: install the stream module with: {STREAM_INSTALL_HINT}")
    return f"load_module {_quote(module)};\n"


def stream_missing(binary: str = "nginx") -> str | None:
    """None when ``binary`` can run a ``stream { }`` block, else why not (with the install command)."""
    try:
        stream_module_lines(binary)
    except (NginxError, OSError, subprocess.SubprocessError) as error:
        return str(error)
    return None


def _quote(value: str | Path) -> str:
    """Quote a path for an nginx config file."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def main_context(prefix: Path) -> str:
    """Main-context directives that keep a throwaway nginx inside ``prefix``."""
    logs = prefix / "logs"
    lines = []
    if os.geteuid() == 0:
        # A root master would run its workers as "nobody", who cannot enter
        # the private 0700 prefix (temp files, logs) and so fails requests
        # oddly. The tests run as root, so keep workers as root there. For
        # other users nginx ignores "user" with a warning, hence the check.
        lines.append("user root;")
    lines += [
        f"pid {_quote(logs / 'nginx.pid')};",
        # Only used on platforms without atomic operations, but keep it local.
        f"lock_file {_quote(logs / 'nginx.lock')};",
        f"error_log {_quote(logs / 'error.log')} notice;",
    ]
    return "\n".join(lines) + "\n"


def http_paths(prefix: Path) -> str:
    """http-context directives that move every temp path and the access log into ``prefix``.

    Debian compiles in /var/lib/nginx/* and nginx creates these directories
    even for ``nginx -t``, so they must all be overridden.
    """
    temp = prefix / "temp"
    names = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    lines = [f"{name}_temp_path {_quote(temp / name)};" for name in names]
    lines.append(f"access_log {_quote(prefix / 'logs' / 'access.log')};")
    return "\n".join(lines) + "\n"


def _indent(text: str, spaces: int = 4) -> str:
    pad = " " * spaces
    return "".join(pad + line if line.strip() else line for line in text.splitlines(True))


def _prefix_argv(binary: str, prefix: Path, conf: Path) -> list[str]:
    # The trailing slash matters: nginx concatenates the prefix with relative paths.
    return [binary, "-p", f"{prefix}/", "-e", str(prefix / "logs" / "error.log"), "-c", str(conf)]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("r", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))
    except OSError as exc:
        return f"(no log: {exc})"


def check_upstream_files(directory: Path, binary: str = "nginx") -> None:
    """Check every ``*.upstream`` and ``*.stream`` file in ``directory`` with ``nginx -t``.

    The ``*.upstream`` files are included into the http block of a minimal
    throwaway config, the ``*.stream`` files (TCP upstreams) into its stream
    block, as a user's nginx.conf includes them. Raises NginxConfigError,
    carrying nginx's own message, when nginx rejects them. An empty
    directory passes. Takes a few milliseconds.
    """
    nginx = find_nginx(binary)
    if nginx is None:
        raise NginxError(nginx_missing(binary) or f"{binary} not found")
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise NginxConfigError(f"{directory} is not a directory")
    with tempfile.TemporaryDirectory(prefix="nginx-check-") as tmp:
        prefix = Path(tmp)
        # nginx creates only the last component of each temp path.
        (prefix / "logs").mkdir()
        (prefix / "temp").mkdir()
        # Include through a symlink with a plain name: the real directory may
        # hold glob characters ("[", "*") that nginx's include would expand.
        link = prefix / "upstreams"
        link.symlink_to(directory, target_is_directory=True)
        conf = prefix / "nginx.conf"
        stream = ""
        if any(directory.glob("*.stream")):
            stream = "stream {\n" + _indent(f"include {_quote(str(link) + '/*.stream')};\n") + "}\n"
        conf.write_text(
            (stream_module_lines(nginx) if stream else "")
            + main_context(prefix)
            + "events {}\n"
            + "http {\n"
            + _indent(http_paths(prefix) + f"include {_quote(str(link) + '/*.upstream')};\n")
            + "}\n"
            + stream
        )
        result = subprocess.run(
            [*_prefix_argv(nginx, prefix, conf), "-t", "-q"],
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    if result.returncode != 0:
        # Point messages at the real files rather than the throwaway link.
        output = (result.stdout + result.stderr).replace(str(link), str(directory)).strip()
        raise NginxConfigError(
            f"nginx rejected the upstream files in {directory}:\n{output}", output
        )


def _children(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    children_file = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return {int(x) for x in children_file.read_text().split()}
    except (OSError, ValueError):
        pass
    # Kernels built without CONFIG_PROC_CHILDREN: scan every process.
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses; fields follow the last ")".
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.add(int(entry.name))
    return found


def _title(pid: int) -> str:
    """The process title nginx set (e.g. ``nginx: worker process``), or ""."""
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _kill_group_quietly(proc: subprocess.Popen[bytes]) -> None:
    """Last-resort cleanup at interpreter exit, so no nginx outlives its owner."""
    if proc.poll() is None:
        try:
            for child in _children(proc.pid):
                os.kill(child, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass


class LocalNginx:
    """Stock nginx run in the foreground (``daemon off``) inside a private prefix.

    nginx needs a configuration before it can start, so the usual order is
    :meth:`write_config`, then :meth:`start`. Used as a context manager it
    does not start by itself; leaving the block stops nginx and removes a
    prefix that was created here (see :meth:`close`).

    The master runs in the foreground as our child process: that lets us see
    it exit and read its stderr, while ``-s reload`` still works through the
    pid file exactly as for a daemonised nginx.
    """

    worker_processes = 2

    def __init__(self, binary: str = "nginx", workdir: Path | None = None) -> None:
        self.binary: str = find_nginx(binary) or binary
        self._owns_prefix = workdir is None
        self.prefix: Path = (
            Path(tempfile.mkdtemp(prefix="localnginx-")) if workdir is None else Path(workdir)
        )
        self.conf_path: Path = self.prefix / "conf" / "nginx.conf"
        self.pid_path: Path = self.prefix / "logs" / "nginx.pid"
        self.error_log_path: Path = self.prefix / "logs" / "error.log"
        self.access_log_path: Path = self.prefix / "logs" / "access.log"
        self.stderr_path: Path = self.prefix / "logs" / "stderr.log"
        # Ports start() waits for; filled from the "listen" lines of the config.
        self.listen_ports: list[int] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], LocalNginx] | None = None

    # -- configuration ----------------------------------------------------

    def render_config(self, http_block_body: str, stream_block_body: str | None = None) -> str:
        """Return a complete nginx.conf with ``http_block_body`` inside ``http { }``.

        ``stream_block_body`` (TCP proxying) goes inside ``stream { }``, with
        the stream module loaded first when nginx has it as a dynamic module.
        """
        stream = ""
        if stream_block_body is not None:
            stream = "stream {\n" + _indent(stream_block_body.rstrip("\n") + "\n") + "}\n"
        return (
            "# Written by reloader.localenv.nginx; every path is under the prefix.\n"
            + (stream_module_lines(self.binary) if stream else "")
            + main_context(self.prefix)
            + f"worker_processes {self.worker_processes};\n"
            # Foreground master: it is our child, so start/stop are direct.
            + "daemon off;\n"
            + "events {\n    worker_connections 1024;\n}\n"
            + "http {\n"
            + _indent(http_paths(self.prefix))
            + _indent(http_block_body.rstrip("\n") + "\n")
            + "}\n"
            + stream
        )

    def write_config(self, http_block_body: str, stream_block_body: str | None = None) -> Path:
        """Write nginx.conf around ``http_block_body`` and return its path.

        The ports of the ``listen`` lines in the body become
        :attr:`listen_ports`, which :meth:`start` waits for on 127.0.0.1.
        Writing does not reload a running nginx; call :meth:`reload`.
        """
        for sub in ("conf", "logs", "temp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        # Subclasses that override render_config(http_block_body) keep working without a stream block.
        text = (self.render_config(http_block_body) if stream_block_body is None
                else self.render_config(http_block_body, stream_block_body))
        self.conf_path.write_text(text)
        self.listen_ports = sorted(
            {int(m.group(1)) for m in _LISTEN.finditer(http_block_body + "\n" + (stream_block_body or "") + "\n")}
        )
        return self.conf_path

    # -- argv -------------------------------------------------------------

    def command(self, *args: str) -> list[str]:
        """argv of nginx with this prefix, error log and config, then ``args``."""
        return [*_prefix_argv(self.binary, self.prefix, self.conf_path), *args]

    def test_argv(self) -> list[str]:
        """argv that checks the configuration (``nginx ... -t``)."""
        return self.command("-t")

    def reload_argv(self) -> list[str]:
        """argv that asks the running master to reload (``nginx ... -s reload``)."""
        return self.command("-s", "reload")

    def test(self) -> tuple[bool, str]:
        """Run ``nginx -t`` on the current config; return (ok, combined output)."""
        result = subprocess.run(
            self.test_argv(),
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        return result.returncode == 0, (result.stdout + result.stderr).strip()

    # -- state ------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the master process exists."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def master_pid(self) -> int | None:
        """The master's pid while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    def worker_pids(self) -> set[int]:
        """Current worker processes, including old ones still shutting down."""
        master = self.master_pid
        if master is None:
            return set()
        # Children also include cache manager/loader when a cache is set up.
        return {pid for pid in _children(master) if "worker process" in _title(pid)}

    def url(self, path: str = "/", port: int | None = None) -> str:
        """``http://127.0.0.1:PORT/path`` for the first (or given) listen port."""
        if port is None:
            if not self.listen_ports:
                raise NginxError("the config has no listen port")
            port = self.listen_ports[0]
        return f"http://127.0.0.1:{port}{path}"

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of nginx's error log and stderr, for error messages."""
        return (
            f"--- {self.error_log_path}\n{_tail(self.error_log_path, lines)}"
            f"--- {self.stderr_path}\n{_tail(self.stderr_path, lines)}"
        )

    # -- lifecycle --------------------------------------------------------

    def start(self, timeout: float = 10) -> None:
        """Start nginx; return once the master wrote its pid file, every listen
        port accepts connections and all workers are up.

        The config is checked first, so a bad one raises NginxConfigError
        with nginx's message. Does nothing if nginx already runs.
        """
        if self.running:
            return
        if not self.conf_path.is_file():
            raise NginxError("no configuration yet; call write_config() first")
        if find_nginx(self.binary) is None:
            raise NginxError(nginx_missing(self.binary) or f"{self.binary} not found")
        ok, output = self.test()
        if not ok:
            raise NginxConfigError(f"nginx rejected {self.conf_path}:\n{output}", output)
        self.pid_path.unlink(missing_ok=True)
        began = time.monotonic()
        with self.stderr_path.open("ab") as err:
            self._proc = subprocess.Popen(
                self.command(),
                cwd=self.prefix,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                # Own session: terminal signals aimed at the test run do not
                # reach nginx behind stop()'s back.
                start_new_session=True,
            )
        self._finalizer = weakref.finalize(self, _kill_group_quietly, self._proc)
        deadline = began + timeout
        try:
            self._wait_until(self._is_ready, deadline, "start")
        except BaseException:
            self._terminate()
            raise
        log.info("nginx in %s ready in %.2f s", self.prefix, time.monotonic() - began)

    def _is_ready(self) -> bool:
        assert self._proc is not None
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return False
        return (
            pid == self._proc.pid
            and all(port_accepts(port) for port in self.listen_ports)
            and len(self.worker_pids()) >= self.worker_processes
        )

    def _wait_until(self, condition: Callable[[], bool], deadline: float, what: str) -> None:
        """Poll ``condition()`` until true; raise NginxError on exit or deadline."""
        while not condition():
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise NginxError(f"nginx exited (code {code}) during {what}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise NginxError(f"nginx {what} did not finish in time:\n{self.log_tail()}")
            time.sleep(0.02)

    def reload(self, timeout: float = 10) -> None:
        """Reload the config (``-s reload``) and wait until it took effect.

        "Took effect" means a full set of new workers runs and every old
        worker has exited or is shutting down (it no longer accepts new
        connections). A config nginx rejects raises NginxConfigError and
        leaves the running nginx untouched.
        """
        if not self.running:
            raise NginxError("nginx is not running")
        ok, output = self.test()
        if not ok:
            raise NginxConfigError(f"nginx rejected {self.conf_path}:\n{output}", output)
        old = self.worker_pids()
        result = subprocess.run(
            self.reload_argv(),
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise NginxError(f"nginx -s reload failed:\n{(result.stdout + result.stderr).strip()}")

        def reloaded() -> bool:
            current = self.worker_pids()
            new = current - old
            retiring = current & old
            return len(new) >= self.worker_processes and all(
                "shutting down" in _title(pid) for pid in retiring
            )

        self._wait_until(reloaded, time.monotonic() + timeout, "reload")

    def _terminate(self, grace: float = 10.0) -> None:
        """Fast shutdown (SIGTERM), SIGKILL for master and workers after ``grace``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            workers = _children(proc.pid)
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning("nginx in %s ignored SIGTERM; killing it", self.prefix)
                for pid in workers | _children(proc.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                proc.kill()
                proc.wait()
        self._proc = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def stop(self) -> None:
        """Stop nginx. The prefix (config, logs) stays, so start() works again."""
        self._terminate()

    def restart(self, timeout: float = 10) -> None:
        """Stop nginx if it runs, then start it with the current config."""
        self._terminate()
        self.start(timeout=timeout)

    def close(self) -> None:
        """Stop nginx and remove the prefix if it was created here."""
        self._terminate()
        if self._owns_prefix:
            shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> LocalNginx:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LocalNginx {self.prefix} {state} ports={self.listen_ports}>"


def server_block(port: int, body: str) -> str:
    """``server { listen 127.0.0.1:PORT; BODY }``, a convenience for test configs."""
    return "server {\n" + _indent(f"listen 127.0.0.1:{port};\n" + body.rstrip("\n") + "\n") + "}\n"
