"""Indexed Matcher: serves list indexes from memory through Redis streams, kept fresh from the change log."""
