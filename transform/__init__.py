"""Python ETL: landing Parquet files -> `analytics.daily_sales` (pandas, exact money)."""
