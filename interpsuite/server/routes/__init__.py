"""The API routes, one module per topic."""
