"""Where instances come from. ZooKeeper is the one source today."""
