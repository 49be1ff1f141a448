-- The blind ceiling per template of one dataset: the blind-oracle run's majority accuracy under one
-- panel beside the template's answer statistics (sum_sq_share: the chance a guess drawn like the
-- answers are is right). Templates are listed only when the dataset has a blind-oracle run.
WITH shares AS (
    SELECT question, count(*) / sum(count(*)) OVER (PARTITION BY question) AS share
    FROM questions
    WHERE dataset_id = $dataset
    GROUP BY question, lower(trim(answer))
), sq AS (
    SELECT question, sum(share * share) AS sum_sq_share FROM shares GROUP BY question
)
SELECT t.template, t.n_asked, t.n_distinct_answers, t.top_answer_share, sq.sum_sq_share, t.majority_accuracy
FROM template_accuracy AS t
JOIN sq ON sq.question = t.template
WHERE t.dataset = $dataset AND t.panel = $panel AND t.model = $oracle
ORDER BY t.majority_accuracy DESC, t.template
