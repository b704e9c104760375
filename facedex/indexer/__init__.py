"""Indexer: builds one list's index at a time, in a child process, and stores it."""
