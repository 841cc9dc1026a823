"""The toy world (``world``: problems, target, surrogate, compressor, inverter) and tiny offline models."""
