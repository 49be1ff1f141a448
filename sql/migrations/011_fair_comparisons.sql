-- Fair comparisons (tasks/statistics.py): beside the published-protocol McNemar test of two runs,
-- the difference of their accuracies, a Holm adjustment over the comparisons of one dataset and
-- panel, a volume-clustered test of the paired difference (a volume's questions are not
-- independent), and the same on the jury the two runs have in common (the judges of the panel
-- that judged both: merlin has no Gemini verdicts, so against merlin only GPT and Qwen count).
ALTER TABLE run_comparisons ADD COLUMN diff DOUBLE;                 -- accuracy a - b on the shared questions
ALTER TABLE run_comparisons ADD COLUMN p_holm DOUBLE;               -- McNemar, Holm-adjusted within (dataset, panel)
ALTER TABLE run_comparisons ADD COLUMN p_clustered DOUBLE;          -- paired difference, volume-clustered z test
ALTER TABLE run_comparisons ADD COLUMN p_clustered_holm DOUBLE;
ALTER TABLE run_comparisons ADD COLUMN n_volumes INTEGER;
ALTER TABLE run_comparisons ADD COLUMN common_judges VARCHAR[];     -- the judges both runs' juries have
ALTER TABLE run_comparisons ADD COLUMN same_jury BOOLEAN;           -- the two juries are the same
ALTER TABLE run_comparisons ADD COLUMN common_n_shared INTEGER;
ALTER TABLE run_comparisons ADD COLUMN common_only_a INTEGER;
ALTER TABLE run_comparisons ADD COLUMN common_only_b INTEGER;
ALTER TABLE run_comparisons ADD COLUMN common_diff DOUBLE;
ALTER TABLE run_comparisons ADD COLUMN common_p_value DOUBLE;
ALTER TABLE run_comparisons ADD COLUMN common_p_holm DOUBLE;
ALTER TABLE run_comparisons ADD COLUMN common_p_clustered DOUBLE;
