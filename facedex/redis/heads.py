"""List change heads announced in Redis, so an Indexed Matcher knows its index is current without asking PostgreSQL.

Why: to stay read-your-writes fresh, a matcher read every list's change head from the Faces DB for every batch it
answered (beside the search). At one request at a time that round trip was the longest part of a small list's answer
(10k faces end to end: 3.3 ms with it, 2.9 ms without) and its CPU slowed a 1M list's search (5.1 -> 4.9 ms).

How it stays exact:

- Every Faces DB write that changes a list's membership announces the list's new ``change_seq`` here *inside its
  transaction, before commit* (:meth:`ChangeHeads.announce`, a compare-and-raise, so the key only grows). If Redis
  does not take it, the transaction rolls back and the write is refused (``CHANGES_NOT_ANNOUNCED``, 503): no write is
  ever acknowledged without its head being announced. A deleted list is announced as :data:`GONE`.
- The proxy appends a matching request to its list's stream together with the list's announced head, read in the
  same server-side step (:meth:`ChangeHeads.append`, one Lua call: one round trip, as the XADD alone was).
- The matcher answers from its index without a head read only if the index already holds every change up to the
  request's announced head. A missing head (a Redis restart lost it; a list with no write since) or one the index
  lacks sends the batch down the old path: head and delta read from the Faces DB beside the search.

So a write acknowledged to a client before it asks for a match has its head announced before the match is appended,
and the match is answered from an index that holds it. An announced head the commit never reached (the transaction
failed after announcing) only costs head reads until a later write commits that number. Every process that writes to
the Faces DB must be configured with the deployment's Redis (``redis_url``) for this to hold; they all read the same
settings.
"""

from __future__ import annotations

import uuid

import redis.asyncio as aredis

from facedex import descriptors
from facedex.redis.keys import Keys

GONE = 1 << 62  # announced for a deleted list: above any head an index can hold, so matchers go and find it gone
GONE_TTL_S = 86_400  # a deleted list's marker then expires: a missing head is read from the Faces DB too (gone)

# KEYS[1]: the list's head; ARGV[1]: the new head, ARGV[2]: seconds to keep it ('' = for good). Raise only
# (concurrent writers of one list are serialised by its row lock, but a retried announce may come late).
_ANNOUNCE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
local new = tonumber(ARGV[1])
if new > cur then
  if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) else redis.call('SET', KEYS[1], ARGV[1]) end
end
return 1
"""

# KEYS[1]: the stream; KEYS[2]: the list's head. ARGV: payload, maxlen. The entry carries the head read in the same
# atomic step ('' when none is announced), so no write acknowledged before this call can be missing from it.
_APPEND = """
local head = redis.call('GET', KEYS[2]) or ''
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'm', ARGV[1], 'h', head)
"""

HEAD_FIELD = b"h"
PAYLOAD_FIELD = b"m"


class ChangeHeads:
    def __init__(self, redis: aredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._announce = redis.register_script(_ANNOUNCE)
        self._append = redis.register_script(_APPEND)

    async def announce(self, list_id: uuid.UUID, head: int, ttl_s: int | None = None) -> None:
        """Raise the list's announced head to ``head`` (raises if Redis does not answer: the caller rolls back).

        One key per matching label (list, descriptor version), in the slot of the label's stream (Redis Cluster)."""
        async with self.redis.pipeline(transaction=False) as p:
            for spec in descriptors.versions():
                key = self.keys.list_head(Keys.matching_label(str(list_id), spec.version))
                await self._announce(keys=[key], args=[head, "" if ttl_s is None else ttl_s], client=p)
            await p.execute()

    async def gone(self, list_id: uuid.UUID) -> None:
        """The list is deleted: every matcher reads the Faces DB for it (and finds it gone)."""
        await self.announce(list_id, GONE, GONE_TTL_S)

    async def append(self, label: str, payload: bytes, maxlen: int) -> bytes:
        """XADD ``payload`` to the label's stream with the list's announced head; returns the entry id."""
        keys = [self.keys.stream(label), self.keys.list_head(label)]
        return await self._append(keys=keys, args=[payload, maxlen])  # type: ignore[no-any-return]


def entry_head(fields: dict[bytes, bytes]) -> int | None:
    """The announced head a stream entry carries (None: none was announced, or an entry from an older proxy)."""
    raw = fields.get(HEAD_FIELD)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        return None
