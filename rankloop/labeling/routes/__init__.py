"""REST API and pages, one module per resource."""
