-- Per run, panel and category (multi-label: a question counts in each of its categories), over
-- the questions with a prediction. Questions without a category appear in no row.
CREATE OR REPLACE VIEW definitions.category_accuracy AS
SELECT v.model,
       c.category,
       count(*) AS n,
       avg(v.majority_correct::DOUBLE) AS majority_accuracy,
       avg(v.strict_correct::DOUBLE) AS strict_accuracy,
       v.panel,
       v.dataset,
       v.run_id
FROM definitions.jury_verdicts AS v
JOIN main.question_categories AS c ON c.dataset_id = v.dataset AND c.qid = v.qid
GROUP BY v.dataset, v.model, v.run_id, v.panel, c.category;
