"""auth-service: users of Cat House (schema `auth`)."""
