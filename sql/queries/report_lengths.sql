-- Answer lengths in whole words, as the upstream plot draws them (one distribution per source: the
-- dataset's questions, its reference answers, every run's answered predictions): quartiles, the
-- 5th-95th percentile whiskers, the extremes and the mean per source.
WITH texts AS (
    SELECT 'questions' AS source, 0 AS kind, question AS text FROM questions WHERE dataset_id = $dataset
    UNION ALL SELECT 'references', 1, answer FROM questions WHERE dataset_id = $dataset
    UNION ALL SELECT model, 2, text FROM stg_predictions WHERE dataset = $dataset AND status = 'ok'
), words AS (
    SELECT source, kind, len(regexp_split_to_array(trim(text), '\s+')) - (trim(text) = '')::INTEGER AS words
    FROM texts
)
SELECT source, min(kind) AS kind, count(*) AS n, min(words) AS lowest, max(words) AS highest, avg(words) AS mean,
       quantile_disc(words, 0.05) AS p05, quantile_disc(words, 0.25) AS q1, quantile_disc(words, 0.5) AS median,
       quantile_disc(words, 0.75) AS q3, quantile_disc(words, 0.95) AS p95
FROM words GROUP BY source ORDER BY kind, source;
