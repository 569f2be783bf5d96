"""Configuration: the one frozen Settings, the checks of single values, the services array, the .env files."""
