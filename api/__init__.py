"""FastAPI service: jobs, adapters, classification, health and metrics."""
