-- Correctness (jury mean) of up to $max_questions questions x every run, the questions a deterministic
-- sample (by hash of qid) when the dataset has more.
WITH chosen AS (
    SELECT qid FROM questions WHERE dataset_id = $dataset ORDER BY hash(qid), qid LIMIT $max_questions
)
SELECT c.qid, c.model, c.jury_mean
FROM correctness_matrix AS c
JOIN chosen USING (qid)
WHERE c.dataset = $dataset AND c.panel = $panel;
