"""The HTTP service and web page: `curata serve` (see `curata.service.app.create_app`)."""
