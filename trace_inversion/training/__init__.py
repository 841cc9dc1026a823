"""Training students and inverters (``sft``: TRL recipes) and evaluating them (``evaluation``)."""
