-- The source file's size and mtime when its inputs were built: plan() compares them with the file on
-- disk, so a volume replaced by other content is rebuilt (hashing every file on every run would cost
-- a full read of the data set).
ALTER TABLE model_inputs ADD COLUMN source_size BIGINT;
ALTER TABLE model_inputs ADD COLUMN source_mtime_ns BIGINT;
