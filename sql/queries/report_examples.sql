-- A few questions (deterministic sample) with the reference and every run's answer, for the report.
WITH chosen AS (
    SELECT qid, question, answer FROM questions WHERE dataset_id = $dataset ORDER BY hash(qid), qid LIMIT $n
)
SELECT chosen.qid, chosen.question, chosen.answer, p.model, coalesce(p.text, '[' || p.status || '] ' || coalesce(p.reason, '')) AS prediction
FROM chosen
LEFT JOIN stg_predictions AS p ON p.qid = chosen.qid AND p.dataset = $dataset
ORDER BY chosen.qid, p.model;
