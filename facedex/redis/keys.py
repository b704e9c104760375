"""Every Redis key facedex uses, in one place. All start with the deployment's ``redis_prefix``.

Hash tags (``{...}``) keep the Index Manager's keys in one Redis Cluster slot,
so its multi-key operations (queue move + task update) stay atomic there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "facedex"

    # ---- Index Manager: task repository, FIFO queue, master lock
    def task(self, task_id: str) -> str:
        """Hash: one task record."""
        return f"{self.prefix}:{{manager}}:task:{task_id}"

    @property
    def tasks(self) -> str:
        """Sorted set: every task id, scored by creation time."""
        return f"{self.prefix}:{{manager}}:tasks"

    @property
    def queue(self) -> str:
        """List: pending task ids, FIFO (RPUSH in, LMOVE out)."""
        return f"{self.prefix}:{{manager}}:queue"

    @property
    def dispatching(self) -> str:
        """List: task ids popped from the queue but not yet handed to an indexer (recovered by a new master)."""
        return f"{self.prefix}:{{manager}}:dispatching"

    @property
    def indexing(self) -> str:
        """Set: task ids handed to an indexer and not finished yet."""
        return f"{self.prefix}:{{manager}}:indexing"

    def active(self, list_id: str) -> str:
        """String: the task id of the list's one active (pending or indexing) task."""
        return f"{self.prefix}:{{manager}}:active:{list_id}"

    @property
    def master_lock(self) -> str:
        """String with TTL: held by the master Index Manager."""
        return f"{self.prefix}:{{manager}}:master"

    @property
    def master_fence(self) -> str:
        """Integer: the fencing counter, INCRemented each time the master lock is taken (the lock holds its value)."""
        return f"{self.prefix}:{{manager}}:master_fence"

    @property
    def last_planning(self) -> str:
        """String: unix time of the last planning run (the schedule's base survives restarts)."""
        return f"{self.prefix}:{{manager}}:last_planning"

    # ---- Indexed Matcher and the proxy's indexed plugin
    MATCHER_GROUP = "matchers"  # the consumer group every matcher of a label joins

    @staticmethod
    def matching_label(list_id: str, version: int) -> str:
        """A matching label: one index serves one (list, descriptor version), as ``<list_id>:<version>``."""
        return f"{list_id}:{int(version)}"

    def label(self, label: str, matcher_id: str) -> str:
        """String with TTL: this matcher serves this matching label, renewed while it does."""
        return f"{self.prefix}:label:{label}:{matcher_id}"

    @property
    def labels(self) -> str:
        """Sorted set of ``<list_id>:<version>:<matcher_id>`` scored by the label key's expiry (Redis server time,
        ms): the proxy reads the live labels with one ZRANGEBYSCORE instead of scanning the keyspace."""
        return f"{self.prefix}:labels"

    @staticmethod
    def labels_member(label: str, matcher_id: str) -> str:
        return f"{label}:{matcher_id}"

    @staticmethod
    def labels_member_label(member: str) -> str:
        """The matching label of a labels member (matcher ids may contain ':' themselves)."""
        return ":".join(member.split(":", 2)[:2])

    def stream(self, label: str) -> str:
        """Stream: matching requests for one matching label; the hash tag keeps it whole in Redis Cluster."""
        return f"{self.prefix}:stream:{{{label}}}"

    def list_head(self, label: str) -> str:
        """String: the list's last announced change head (``lists.change_seq``), per matching label so it shares the
        stream's slot (:mod:`facedex.redis.heads`)."""
        return f"{self.prefix}:head:{{{label}}}"

    def replies(self, proxy_id: str) -> str:
        """Pub/sub channel: answers for one proxy instance, matched to requests by rid."""
        return f"{self.prefix}:replies:{proxy_id}"

