"""The operators' HTTP API: routes, OpenAPI, the dashboard."""
