-- Long form of the question x model matrix: jury_mean = yes_votes / jury_size, per panel.
-- Pivot at query time (a dynamic PIVOT cannot live in a view):
--   PIVOT (FROM correctness_matrix WHERE panel = 'upstream') ON model USING first(jury_mean) GROUP BY qid
CREATE OR REPLACE VIEW definitions.correctness_matrix AS
SELECT qid, model, yes_votes / jury_size AS jury_mean, yes_votes, jury_size, panel, dataset, run_id
FROM definitions.jury_verdicts;
