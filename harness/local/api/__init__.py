"""The local server's HTTP side: the routes, request validation, Neon's JSON shapes, the
schema routes' answers and the request journal."""
