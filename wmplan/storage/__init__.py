"""Storage: versioned Parquet schemas and files, and experiment tracking (depends on platform only)."""
