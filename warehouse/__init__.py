"""Warehouse side of the pipeline: load landed Parquet into `raw`, then run dbt."""
