"""What users call, pinned: the OpenAPI document, the CLI options, the Python API names."""
