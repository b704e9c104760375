"""Whether this Indexed Matcher may serve: the Licenses service's answer, refreshed periodically."""

from __future__ import annotations

import logging

from facedex.config import Settings
from facedex.licenses.client import feature_enabled

log = logging.getLogger(__name__)


class License:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.licensed = False
        self.reason = "not checked yet"

    async def check(self) -> None:
        licensed, reason = await feature_enabled(self.settings, "index")
        if licensed != self.licensed:
            log.warning("indexed matching %s (%s)", "licensed" if licensed else "NOT licensed", reason or "ok")
        # Labels stay advertised either way: the proxy checks the license too, and so can tell the client
        # why a list is served by brute force; requests that reach us unlicensed get 26309.
        self.licensed, self.reason = licensed, reason
