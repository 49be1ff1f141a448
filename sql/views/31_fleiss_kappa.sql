-- Fleiss' kappa of a panel's judges per run, over the questions on which every judge of the run's jury
-- gave a true/false verdict (Fleiss needs the same number n of raters per item, here the jury size).
--   P_i = (yes^2 + no^2 - n) / (n (n - 1)),  P_bar = mean P_i = (sum(yes^2 + no^2) - N n) / (N n (n - 1)),
--   p_yes = sum yes / (N n),  P_e = p_yes^2 + (1 - p_yes)^2,  kappa = (P_bar - P_e) / (1 - P_e)  (NULL if P_e = 1).
-- Integer sums first, so the result does not depend on the order DuckDB adds rows in (the summary table
-- and the definition must agree exactly).
CREATE OR REPLACE VIEW definitions.fleiss_kappa AS
WITH items AS (
    SELECT model, panel, dataset, run_id, jury_size AS n, yes_votes AS yes, no_votes AS no
    FROM definitions.jury_verdicts
    WHERE jury_size >= 2 AND no_verdict = 0
), agg AS (
    SELECT model, panel, dataset, run_id, any_value(n) AS n_judges, count(*) AS n_items,
           (sum(yes * yes + no * no) - sum(n))::DOUBLE / sum(n * (n - 1)) AS p_bar,
           sum(yes)::DOUBLE / sum(n) AS p_yes
    FROM items GROUP BY model, panel, dataset, run_id
)
SELECT model, panel, n_judges, n_items, p_bar AS observed_agreement,
       p_yes * p_yes + (1 - p_yes) * (1 - p_yes) AS chance_agreement,
       (p_bar - (p_yes * p_yes + (1 - p_yes) * (1 - p_yes)))
           / nullif(1 - (p_yes * p_yes + (1 - p_yes) * (1 - p_yes)), 0) AS kappa,
       dataset, run_id
FROM agg;
