"""Licenses: a signed license file with features (``index``) and an expiry, served to the matchers."""
