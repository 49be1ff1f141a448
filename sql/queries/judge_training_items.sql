-- One row per answered prediction of a run the upstream jury judged: the item, each published
-- judge's verdict (NULL when it gave none) and the published majority (the `upstream` panel of
-- jury_verdicts: a missing vote counts against, as in every jury view).
WITH verdicts AS (
    SELECT run_id, qid,
           any_value(verdict) FILTER (WHERE judge = 'gpt') AS gpt,
           any_value(verdict) FILTER (WHERE judge = 'gemini2.5') AS gemini,
           any_value(verdict) FILTER (WHERE judge = 'qwen') AS qwen
    FROM stg_judgments WHERE judge IN ('gpt', 'gemini2.5', 'qwen')
    GROUP BY ALL
)
SELECT v.model, v.qid, q.volume, q.question, q.answer, p.text AS prediction,
       j.gpt, j.gemini, j.qwen, v.majority_correct AS majority, v.jury_size
FROM jury_verdicts AS v
JOIN questions AS q ON q.dataset_id = v.dataset AND q.qid = v.qid
JOIN predictions AS p ON p.run_id = v.run_id AND p.qid = v.qid
JOIN verdicts AS j ON j.run_id = v.run_id AND j.qid = v.qid
WHERE v.panel = 'upstream'
ORDER BY v.model, q.volume, q.idx
