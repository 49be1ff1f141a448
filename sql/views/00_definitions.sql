-- Every metric is defined once, as a view in the schema `definitions` (always computed live from
-- the tables). The views of the same names in `main` are what analysts and commands read: for the
-- per-run metrics they read summary tables refreshed from these definitions by the writers
-- (warehouse/summaries.py), guarded so a stale summary raises instead of answering.
CREATE SCHEMA IF NOT EXISTS definitions;
