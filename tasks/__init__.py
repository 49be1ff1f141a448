"""Units of work: plain functions with thin Prefect @task wrappers."""
