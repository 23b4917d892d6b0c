"""The ``nginx-upstream-reloader`` command line.

Exit codes: 0 on success (and after a clean SIGTERM/SIGINT), 2 for a bad
config or bad usage, 1 for a failure at run time.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType
from typing import Sequence

from reloader import __version__
from reloader.config import Config, ConfigError, load_config

EXIT_CONFIG = 2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nginx-upstream-reloader",
        description="Keep nginx upstreams in step with instances registered in ZooKeeper, without reloads.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run in the foreground until SIGTERM or SIGINT")
    run.add_argument("--config", required=True, help="path to upstream_zk_nodes.conf")
    run.add_argument("--files-output-path", help="directory for <name>.upstream files (overrides the config)")
    run.add_argument("--dyups-url", help="base URL of the dyups interface (overrides the config)")
    run.add_argument("--log-level", default="INFO", type=str.upper,
                     choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: INFO")

    check = commands.add_parser("check", help="validate a config and list its upstreams")
    check.add_argument("--config", required=True, help="path to upstream_zk_nodes.conf")

    demo = commands.add_parser("demo", help="a self-contained local demo (ZooKeeper, nginx, three backends)")
    demo.add_argument("--nginx", metavar="PATH", help="a dyups-enabled nginx binary (default: stock nginx, reload mode)")
    demo.add_argument("--interval", type=float, default=3.0, help=argparse.SUPPRESS)
    return parser


def _load(path: str, overrides: dict[str, object] | None = None) -> Config | None:
    try:
        return load_config(path, overrides)
    except ConfigError as error:
        for problem in error.problems:
            print(f"{error.source}: {problem}", file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    for cluster in config.clusters:
        for znode in cluster.znodes:
            print(f"{znode.upstream}\t{cluster.zk_servers}\t{znode.path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT)
    # kazoo logs every reconnect attempt at INFO/WARNING; our own transition
    # lines say what matters, so keep kazoo quieter unless debugging.
    if args.log_level != "DEBUG":
        logging.getLogger("kazoo").setLevel(logging.ERROR)
    overrides = {"files_output_path": args.files_output_path, "dyups_url": args.dyups_url}
    config = _load(args.config, overrides)
    if config is None:
        return EXIT_CONFIG

    from reloader.daemon import Daemon  # imported late: `check` needs no kazoo

    daemon = Daemon(config)

    def stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("received %s; stopping", signal.Signals(signum).name)
        daemon.request_stop()

    def reassert(_signum: int, _frame: FrameType | None) -> None:
        daemon.request_reassert()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # SIGHUP after a manual `nginx -s reload`: put every upstream back into dyups now.
    signal.signal(signal.SIGHUP, reassert)
    return daemon.run()


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "check":
        return _check(args)
    if args.command == "run":
        return _run(args)
    if args.command == "demo":
        from reloader.demo import run_demo  # imported late: only the demo needs localenv

        return run_demo(nginx_binary=args.nginx, interval=args.interval)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
