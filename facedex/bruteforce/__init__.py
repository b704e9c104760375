"""Brute-force Matcher: exact matching, the reference for every similarity facedex returns."""
