"""One test session's branch from backend to teardown, and its report."""
