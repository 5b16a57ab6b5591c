"""The model zoo: one module per model; :func:`alignkit_models.registry.list_models` imports them all."""
