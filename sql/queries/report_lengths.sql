-- Answer lengths in words (capped at 60) of the dataset's questions, references and every run's
-- answered predictions, as shares of each source.
WITH texts AS (
    SELECT 'questions' AS source, question AS text FROM questions WHERE dataset_id = $dataset
    UNION ALL SELECT 'references', answer FROM questions WHERE dataset_id = $dataset
    UNION ALL SELECT model, text FROM stg_predictions WHERE dataset = $dataset AND status = 'ok'
), words AS (
    SELECT source, least(len(regexp_split_to_array(trim(text), '\s+')) - (trim(text) = '')::INTEGER, 60) AS words
    FROM texts
)
SELECT source, words, count(*) AS n, count(*) / sum(count(*)) OVER (PARTITION BY source) AS share
FROM words GROUP BY source, words ORDER BY source, words;
