"""Matcher Proxy: the single entry for matching; picks a route per request, brute force as the fallback."""
