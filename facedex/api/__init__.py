"""Public REST API: accounts, lists, faces and matching (redirected to the Matcher Proxy)."""
