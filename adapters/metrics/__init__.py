"""Text metrics over (reference, prediction) pairs, wrapping sacrebleu, rouge-score, nltk and
sentence-transformers. No DuckDB, no Prefect."""
