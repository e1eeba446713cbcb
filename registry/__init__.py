"""Placeholder: see ARCHITECTURE.md; filled in by the service issue."""
