"""proxy-service: reads across every schema, writes nothing, owns no schema."""
