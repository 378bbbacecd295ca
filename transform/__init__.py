"""Python ETL: the warehouse's `raw` tables -> `analytics.daily_sales` (exact money)."""
