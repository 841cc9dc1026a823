"""Problem data: loading and validating rows (``loading``), dataset folders and parquet (``io``)."""
