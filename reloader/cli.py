"""The ``nginx-upstream-reloader`` command line.

Exit codes: 0 on success (and after a clean SIGTERM/SIGINT), 2 for a bad
config or bad usage, 1 for a failure at run time.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from reloader import __version__, signals
from reloader.config import Config, ConfigError, load_config
from reloader.logsetup import configure_logging
from reloader.process import LockHeld, PidLock, detach, directory_lock
from reloader.sdnotify import SystemdNotifier

EXIT_CONFIG = 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nginx-upstream-reloader",
        description="Keep nginx upstreams in step with instances registered in ZooKeeper, without reloads.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run until SIGTERM or SIGINT (in the foreground unless --daemon)")
    run.add_argument("--config", required=True, help="path to upstream_zk_nodes.conf")
    run.add_argument("--files-output-path", help="directory for <name>.upstream files (overrides the config)")
    run.add_argument("--dyups-url", help="base URL of the dyups interface (overrides the config)")
    run.add_argument("--log-level", default="INFO", type=str.upper,
                     choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: INFO")
    run.add_argument("--log-file", metavar="PATH",
                     help="log to this file (reopened after logrotate and on SIGUSR1) instead of stderr")
    run.add_argument("--log-format", default="text", choices=["text", "json"],
                     help="text (default) or json: one object per line for log shippers")
    run.add_argument("--daemon", action="store_true",
                     help="detach into the background (needs --log-file); not for systemd, supervisord or containers")
    run.add_argument("--pidfile", metavar="PATH", help="write the pid to this locked file; refuse to start twice")

    check = commands.add_parser("check", help="validate a config, list its upstreams and its effective settings")
    check.add_argument("--config", required=True, help="path to upstream_zk_nodes.conf")
    check.add_argument("--connect", action="store_true",
                       help="also try every ZooKeeper cluster (within the session timeout); exit 1 if one is unreachable")

    render = commands.add_parser(
        "render", help="read every znode once and print (or write) what the daemon would publish")
    render.add_argument("--config", required=True, help="path to upstream_zk_nodes.conf")
    render.add_argument("--files-output-path", help="directory of the <name>.upstream files (overrides the config)")
    render.add_argument("--diff", action="store_true",
                        help="print a unified diff against the files on disk instead (differences keep exit 0)")
    render.add_argument("--write", action="store_true", help="write the changed files atomically, one line each")

    snippet = commands.add_parser("nginx-snippet",
                                  help="print the nginx configuration to add for Lua mode or TCP upstreams")
    kind = snippet.add_mutually_exclusive_group(required=True)
    kind.add_argument("--lua", action="store_true",
                      help="the Lua module set-up (lua_package_path, shared dict, interface, include)")
    kind.add_argument("--stream", action="store_true",
                      help="the stream { } block that includes the TCP upstreams' <name>.stream files")
    snippet.add_argument("--config", help="take lua_url, files_output_path and lua_secret_file from this config")

    status = commands.add_parser("status", help="print a running daemon's clusters, upstreams and outputs")
    where = status.add_mutually_exclusive_group()
    where.add_argument("--listen", metavar="ADDR", type=_listen_address, default=None,
                       help="the daemon's `listen:` address, PORT or HOST:PORT (default: 127.0.0.1:9345)")
    where.add_argument("--config", help="take the address from this config's `listen:`")
    status.add_argument("--json", action="store_true", help="print the raw JSON of /status")

    for name, text in (("drain", "take one server out of traffic (rendered down) without touching the registry"),
                       ("undrain", "put a drained server back in traffic")):
        override = commands.add_parser(name, help=text)
        override.add_argument("upstream", metavar="UPSTREAM")
        override.add_argument("server", metavar="HOST:PORT")
        where = override.add_mutually_exclusive_group(required=True)
        where.add_argument("--config", help="the daemon's config (its files_output_path holds the drains)")
        where.add_argument("--files-output-path", metavar="DIR", help="the daemon's files directory")
        if name == "drain":
            override.add_argument("--for", dest="duration", metavar="DURATION",
                                  help="undrain by itself after this long (e.g. 90s, 30m, 2h); default: until undrain")

    demo = commands.add_parser("demo", help="a self-contained local demo (ZooKeeper, nginx, three backends)")
    demo.add_argument("--nginx", metavar="PATH", help="a dyups-enabled nginx binary (default: stock nginx, reload mode)")
    demo.add_argument("--interval", type=float, default=3.0, help=argparse.SUPPRESS)
    return parser


def _listen_address(text: str) -> tuple[str, int]:
    """``--listen``: the same forms as the config's ``listen:`` key."""
    from reloader.config import _parse_listen

    try:
        return _parse_listen(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _load(path: str, overrides: dict[str, object] | None = None) -> Config | None:
    try:
        return load_config(path, overrides)
    except ConfigError as error:
        for problem in error.problems:
            print(f"{error.source}: {problem}", file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    from reloader import check  # imported late: only `check` needs it

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    # One tab-separated line per upstream first (scripts read these), then
    # the effective settings as comment lines.
    for cluster in config.clusters:
        for znode in cluster.znodes:
            print(f"{znode.upstream}\t{cluster.zk_servers}\t{znode.path}")
    for line in check.settings_lines(config):
        print(line)
    for line in check.warnings(config):
        print(line, file=sys.stderr)
    if not args.connect:
        return 0
    states = check.connect_all(config)
    for cluster, state in states:
        print(f"cluster {cluster.label}: {state}")
    return 0 if all(state == "connected" for _, state in states) else 1


def _run(args: argparse.Namespace) -> int:
    if args.daemon and args.log_file is None:
        print("--daemon needs --log-file: a detached process has no terminal to log to", file=sys.stderr)
        return EXIT_CONFIG
    overrides = {"files_output_path": args.files_output_path, "dyups_url": args.dyups_url}
    config = _load(args.config, overrides)
    if config is None:
        return EXIT_CONFIG

    # Everything that can fail is checked here, in the foreground, so that
    # the error reaches the terminal even with --daemon.
    locks: list[PidLock] = []
    try:
        try:
            locks.append(directory_lock(config.files_output_path))
            locks[-1].acquire()
        except LockHeld as held:
            print(f"another nginx-upstream-reloader ({_holder(held)}) already manages "
                  f"{config.files_output_path}: {held.path} is locked", file=sys.stderr)
            return 1
        if args.pidfile is not None:
            try:
                locks.append(PidLock(args.pidfile))
                locks[-1].acquire()
            except LockHeld as held:
                print(f"already running as {_holder(held)}: {held.path} is locked", file=sys.stderr)
                return 1
        logs = configure_logging(args.log_level, args.log_file, args.log_format)
    except OSError as error:
        _release(locks)
        print(f"cannot start: {error}", file=sys.stderr)
        return 1
    except BaseException:
        _release(locks)
        raise

    try:
        if args.daemon:
            keep = [lock.fileno() for lock in locks]
            log_fd = logs.stream_fileno()
            if log_fd is not None:
                keep.append(log_fd)
            # The lines so far are written by the writer thread, which the fork would not keep.
            logs.before_fork()
            detach(keep, logs.log_file)
            for lock in locks:
                lock.write_pid()  # the background process's pid, not the launcher's

        # Imported late: `check` needs no kazoo, and nothing may start a
        # thread before detaching.
        from reloader.daemon import Daemon

        notifier = SystemdNotifier.from_environment()
        daemon = Daemon(config, notifier=notifier, overrides=overrides)
        signals.install(daemon, logs, notifier)
        return daemon.run()
    finally:
        _release(locks)


def _render(args: argparse.Namespace) -> int:
    from reloader.logsetup import configure_logging
    from reloader.oneshot import run_render  # imported late: only `render` needs kazoo

    config = _load(args.config, {"files_output_path": args.files_output_path})
    if config is None:
        return EXIT_CONFIG
    configure_logging("WARNING", None, "text")  # skipped children and guard warnings, on stderr
    return run_render(config, diff=args.diff, write=args.write, out=sys.stdout, err=sys.stderr)


def _nginx_snippet(args: argparse.Namespace) -> int:
    from reloader.nginx.snippet import snippet_for_config, stream_snippet_for_config  # only this command needs them

    config = None
    if args.config is not None:
        config = _load(args.config)
        if config is None:
            return EXIT_CONFIG
    print(stream_snippet_for_config(config) if args.stream else snippet_for_config(config), end="")
    return 0


def _override(args: argparse.Namespace) -> int:
    """``drain`` and ``undrain``: change the overrides file the running daemon watches."""
    from reloader.durations import parse_duration
    from reloader.overrides import OverrideStore, format_endpoint, parse_endpoint

    try:
        server = parse_endpoint(args.server)
        duration = None if getattr(args, "duration", None) is None else parse_duration(args.duration)
    except ValueError as error:
        print(f"{args.command}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    directory = args.files_output_path
    if args.config is not None:
        config = _load(args.config)
        if config is None:
            return EXIT_CONFIG
        known = {znode.upstream for cluster in config.clusters for znode in cluster.znodes}
        if args.upstream not in known:
            print(f"{args.command}: {args.config} configures no upstream {args.upstream!r}", file=sys.stderr)
            return EXIT_CONFIG
        directory = config.files_output_path
    store = OverrideStore(directory)
    shown = f"{args.upstream} {format_endpoint(server)}"
    try:
        if args.command == "drain":
            drain = store.drain(args.upstream, server, duration)
            until = "until undrained" if drain.until is None else f"for {duration:g} s"
            print(f"drained {shown} {until}; the running daemon applies it within a second")
            return 0
        if not store.undrain(args.upstream, server):
            print(f"{shown} was not drained")
            return 0
        print(f"undrained {shown}; the running daemon applies it within a second")
        return 0
    except OSError as error:
        print(f"{args.command}: cannot change {store.path}: {error.strerror or error} "
              "(only a user who may write the files directory may drain)", file=sys.stderr)
        return 1
    except ValueError as error:  # OverrideError too: a damaged file is not overwritten
        print(f"{args.command}: {error}", file=sys.stderr)
        return 1


def _status(args: argparse.Namespace) -> int:
    from reloader.status import DEFAULT_ADDRESS, address_of_config, status_command  # only `status` needs it

    address = args.listen or DEFAULT_ADDRESS
    if args.config is not None:
        config = _load(args.config)
        if config is None:
            return EXIT_CONFIG
        configured = address_of_config(config)
        if configured is None:
            print(f"{config.source} has no `listen:`: a daemon run with it serves no status "
                  "(add `listen: 9345` and reload it)", file=sys.stderr)
            return 1
        address = configured
    return status_command(address, as_json=args.json)


def _holder(held: LockHeld) -> str:
    return f"pid {held.pid}" if held.pid is not None else "another process"


def _release(locks: list[PidLock]) -> None:
    for lock in reversed(locks):
        lock.release()


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "check":
        return _check(args)
    if args.command == "run":
        return _run(args)
    if args.command == "render":
        return _render(args)
    if args.command == "nginx-snippet":
        return _nginx_snippet(args)
    if args.command == "status":
        return _status(args)
    if args.command in ("drain", "undrain"):
        return _override(args)
    if args.command == "demo":
        from reloader.demo import run_demo  # imported late: only the demo needs localenv

        return run_demo(nginx_binary=args.nginx, interval=args.interval)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
