"""nginx-upstream-reloader: keep nginx upstreams in step with ZooKeeper, without reloads."""

__version__ = "0.1.0"
