-- Text metrics per run (the upstream definitions, see adapters/metrics/text.py): averages over the kept
-- pairs (count), corpus BLEU per run. Only scores of the predictions' current texts count; bleu is NULL
-- while it does not describe exactly the current kept pairs (run `ctsvqa score`).
CREATE OR REPLACE VIEW definitions.text_metrics AS
WITH scored AS (
    SELECT s.*
    FROM main.text_scores AS s
    JOIN main.predictions AS p ON p.run_id = s.run_id AND p.qid = s.qid AND p.status = 'ok'
    JOIN main.runs AS r ON r.run_id = s.run_id
    JOIN main.questions AS q ON q.dataset_id = r.dataset_id AND q.qid = s.qid
    WHERE s.pair_sha256 = sha256(q.answer || chr(0) || p.text)
), per_run AS (
    SELECT run_id, metrics_version,
           count(*) FILTER (WHERE kept) AS count,
           avg(rouge1_f) AS rouge1_f, avg(rouge2_f) AS rouge2_f, avg(rougeL_f) AS rougeL_f,
           avg(meteor) AS meteor, avg(sbert_cosine) AS sbert_cosine,
           avg(exact_match::DOUBLE) AS exact_match,
           sha256(string_agg(qid || ':' || pair_sha256, ',' ORDER BY qid) FILTER (WHERE kept)) AS pairs_sha256
    FROM scored GROUP BY run_id, metrics_version
)
SELECT r.name AS model, per_run.count,
       c.bleu, per_run.rouge1_f, per_run.rouge2_f, per_run.rougeL_f, per_run.meteor, per_run.sbert_cosine,
       per_run.exact_match, per_run.metrics_version, r.dataset_id AS dataset, r.run_id
FROM per_run
JOIN main.runs AS r USING (run_id)
LEFT JOIN main.text_corpus_scores AS c
       ON c.run_id = per_run.run_id AND c.metrics_version = per_run.metrics_version
      AND c.pairs_sha256 = per_run.pairs_sha256;
