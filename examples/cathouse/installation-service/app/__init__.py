"""installation-service: which user installed which cat, with which permissions
(schema `installation`)."""
