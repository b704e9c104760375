"""Redis: every key and stream name (keys.py) and the connection (connection.py)."""
