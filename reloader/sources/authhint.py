"""What a ZooKeeper ``NoAuth`` means for one cluster's credentials, in words an operator can act on.

ZooKeeper accepts any digest credential at login (it only hashes it), so a
wrong digest password shows only later, as ``NoAuth`` on the reads its ACL
guards, exactly like a credential that lacks the ACL or no credential at
all. :func:`noauth_hint` says which of these the cluster's config leaves
possible, naming the user and the znode. A wrong SASL password, by
contrast, fails the login itself (see the session handling and
``check --connect``), so with SASL a ``NoAuth`` means a missing ACL.
"""

from __future__ import annotations

from reloader.config import ClusterConfig


def noauth_hint(cluster: ClusterConfig, path: str | None) -> str:
    """Why ``cluster``'s session may be refused a read of ``path`` (no secret is ever shown)."""
    where = path or "the znode"
    if cluster.auth is not None:
        user = cluster.auth.credential.split(":", 1)[0]
        text = (f"the {cluster.auth.scheme} credential for user {user!r} may be wrong (ZooKeeper does not check "
                f"it at login) or lacks the ACL on {where}")
        if cluster.sasl is not None and cluster.sasl.get("username"):
            text += f", and SASL user {cluster.sasl['username']!r} lacks it too"
        return text
    if cluster.sasl is not None:
        user = cluster.sasl.get("username") or cluster.sasl.get("principal") or "of this cluster"
        return f"SASL user {user!r} lacks the ACL on {where}"
    return f"this cluster has no auth: or sasl: credential, and the ACL on {where} requires one"
