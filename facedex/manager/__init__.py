"""Index Manager: build tasks in Redis, one master (Redis lock) that plans and dispatches, every instance serves the API."""
