"""Throwaway local services used by the demo and the tests.

Each module starts one kind of real service on 127.0.0.1 in a private
directory and cleans up after itself:

* :mod:`.zookeeper` -- a standalone ZooKeeper server (Debian's ``zookeeper``).
* :mod:`.nginx` -- stock nginx run in a private prefix, plus a fast
  ``nginx -t`` check for generated upstream files.
* :mod:`.backends` -- tiny HTTP servers that answer with their own name.
* :mod:`.tcpecho` -- tiny TCP servers that answer each line with their own name.
* :mod:`.ports` -- picking free TCP ports.

Nothing here is used by the daemon itself.
"""
