"""HTTP handlers, one module per resource. Handlers stay thin: parse, call a service, respond."""
