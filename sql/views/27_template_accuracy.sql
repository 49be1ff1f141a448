-- Per run, panel and question template: a question text asked in at least two volumes (every
-- phantom question; in CT-SpatialVQA the few stock questions). How often it is asked, how many
-- distinct reference answers it has and the share of its commonest one (what a model that never
-- looks at the image could get from the text alone), and the run's majority accuracy on it over
-- every question asked (a question without a prediction counts as not correct, as in
-- model_accuracy). With the `blind-oracle` run this is the per-template blind ceiling.
CREATE OR REPLACE VIEW definitions.template_accuracy AS
WITH answers AS (
    SELECT dataset_id, question, lower(trim(answer)) AS answer, count(*) AS n
    FROM main.questions
    GROUP BY dataset_id, question, lower(trim(answer))
), templates AS (
    SELECT dataset_id, question,
           sum(n)::INTEGER AS n_asked,
           count(*)::INTEGER AS n_distinct_answers,
           max(n) / sum(n) AS top_answer_share
    FROM answers
    GROUP BY dataset_id, question
    HAVING (SELECT count(DISTINCT q.volume) FROM main.questions AS q
            WHERE q.dataset_id = answers.dataset_id AND q.question = answers.question) >= 2
), runs AS (
    SELECT DISTINCT v.dataset, v.panel, v.model, v.run_id FROM definitions.jury_verdicts AS v
)
SELECT r.model,
       t.question AS template,
       t.n_asked,
       count(v.qid)::INTEGER AS n_judged,
       coalesce(sum(v.majority_correct::INTEGER), 0) / t.n_asked AS majority_accuracy,
       t.n_distinct_answers,
       t.top_answer_share,
       r.panel,
       r.dataset,
       r.run_id
FROM runs AS r
JOIN templates AS t ON t.dataset_id = r.dataset
JOIN main.questions AS q ON q.dataset_id = t.dataset_id AND q.question = t.question
LEFT JOIN definitions.jury_verdicts AS v
       ON v.run_id = r.run_id AND v.panel = r.panel AND v.qid = q.qid
GROUP BY r.dataset, r.panel, r.model, r.run_id, t.question, t.n_asked, t.n_distinct_answers, t.top_answer_share;
