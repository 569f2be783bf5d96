"""catalog-service: cats and the permissions each cat asks for (schema `catalog`)."""
