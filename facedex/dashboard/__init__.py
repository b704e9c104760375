"""Dashboard: the operator's web UI over every service (server-rendered HTML, polled live parts)."""
