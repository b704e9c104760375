"""The master lock with a fencing token: at most one Index Manager acts, even across pauses and partitions.

Why a token and not just a TTL: a master can stall (GC, a slow call, a lost
network) past its lock's TTL while another instance takes over; when it wakes
it must not write. Taking the lock INCRements a fencing counter and stores
``<token>/<instance_id>`` as the lock's value; every master write is one Lua
script (:data:`_FENCED`) that first checks the lock still holds exactly this
value, so a deposed master's writes are refused by Redis itself, atomically
with the check. Renewal runs on its own schedule (every third of the TTL, see
:class:`facedex.manager.master.Master`), never between slow steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import redis.asyncio as aredis
from redis.commands.core import AsyncScript as Script
from redis.exceptions import ResponseError

from facedex.redis.keys import Keys

log = logging.getLogger(__name__)

_ACQUIRE = """
if redis.call('exists', KEYS[1]) == 1 then return false end
local token = redis.call('incr', KEYS[2])
redis.call('set', KEYS[1], token .. '/' .. ARGV[1], 'PX', ARGV[2])
return token
"""
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

# ARGV: the lock value, then commands as (argc, arg1..argc)*. Two pseudo-commands guard a write:
# REQUIRE key field value (abort with STALE unless the hash field has that value; put them first) and
# DELIFEQ key value (delete key only if it holds value). Nothing is written unless every check passes.
_FENCED = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED') end
local cmds = {}
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local cmd = {}
  for j = 1, n do cmd[j] = ARGV[i + j] end
  cmds[#cmds + 1] = cmd
  i = i + n + 1
end
for _, cmd in ipairs(cmds) do
  if cmd[1] == 'REQUIRE' and redis.call('hget', cmd[2], cmd[3]) ~= cmd[4] then
    return redis.error_reply('STALE ' .. cmd[2])
  end
end
local out = {}
for k, cmd in ipairs(cmds) do
  if cmd[1] == 'REQUIRE' then
    out[k] = 1
  elseif cmd[1] == 'DELIFEQ' then
    if redis.call('get', cmd[2]) == cmd[3] then out[k] = redis.call('del', cmd[2]) else out[k] = 0 end
  else
    out[k] = redis.call(unpack(cmd))
  end
end
return out
"""

Command = Sequence[object]


class NotMaster(Exception):
    """This instance does not (or no longer) hold the master lock: the write was not made."""


class StaleTask(Exception):
    """A guarded write found the task in another state than the master read (e.g. cancelled meanwhile)."""


def holder_of(value: str | None) -> str | None:
    """The instance id in a lock value ``<token>/<instance_id>``."""
    return value.split("/", 1)[1] if value and "/" in value else value


class MasterLock:
    def __init__(self, redis: aredis.Redis, keys: Keys, instance_id: str, ttl_s: float) -> None:
        self.r = redis
        self.k = keys
        self.instance_id = instance_id
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.value: str | None = None  # "<token>/<instance_id>" while held
        self.valid_until = 0.0  # monotonic; a safety margin inside the TTL, measured from before the call
        self._fenced: Script | None = None  # registered on first use (a Master can be built without Redis: tests of due())

    @property
    def held(self) -> bool:
        return self.value is not None and time.monotonic() < self.valid_until

    @property
    def token(self) -> int | None:
        return int(self.value.split("/", 1)[0]) if self.value else None

    async def hold(self) -> bool:
        """Renew the lock if held, else try to take it; True when this instance is (newly or still) the master.

        Callers compare :attr:`value` before and after to see a new term (a new fencing token).
        """
        started = time.monotonic()
        if self.value is not None:
            if await self.r.eval(_RENEW, 1, self.k.master_lock, self.value, self.ttl_ms):
                self.valid_until = started + 0.8 * self.ttl_ms / 1000
                return True
            log.warning("%s lost the master lock", self.instance_id)
            self.value = None
        token = await self.r.eval(_ACQUIRE, 2, self.k.master_lock, self.k.master_fence, self.instance_id, self.ttl_ms)
        if token:
            self.value = f"{int(token)}/{self.instance_id}"
            self.valid_until = started + 0.8 * self.ttl_ms / 1000
            log.info("%s took the master lock (fencing token %s)", self.instance_id, token)
            return True
        return False

    def suspend(self) -> None:
        """After a renewal round that failed or timed out: no write until a renewal succeeds again.

        The value is kept, so the next round renews our own lock instead of waiting for it to expire."""
        self.valid_until = 0.0

    async def release(self) -> None:
        if self.value is not None:
            value, self.value = self.value, None
            await self.r.eval(_RELEASE, 1, self.k.master_lock, value)

    async def write(self, *commands: Command) -> list[object]:
        """Run ``commands`` atomically, only if this instance still holds the lock (else :class:`NotMaster`)."""
        value = self.value
        if value is None or not self.held:
            raise NotMaster(f"{self.instance_id} does not hold the master lock")
        args: list[object] = [value]
        keys: list[str] = [self.k.master_lock]
        for cmd in commands:
            args.append(len(cmd))
            args.extend(cmd)
            if len(cmd) > 1 and isinstance(cmd[1], str) and cmd[1].startswith(self.k.prefix):
                keys.append(cmd[1])  # declared for Redis Cluster routing (all {manager} keys share one slot)
        if self._fenced is None:
            self._fenced = self.r.register_script(_FENCED)
        try:
            return await self._fenced(keys=keys, args=args)  # type: ignore[no-any-return]
        except ResponseError as exc:
            if str(exc).startswith("FENCED"):
                if self.value == value:
                    self.value = None
                raise NotMaster(f"{self.instance_id} lost the master lock") from None
            if str(exc).startswith("STALE"):
                raise StaleTask(str(exc)) from None
            raise
