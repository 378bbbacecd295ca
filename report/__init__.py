"""Static HTML report over the `analytics` schema."""
