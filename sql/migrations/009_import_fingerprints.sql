-- What the last upstream import of each dataset was made from: a sha256 over the importer's code
-- and every input file's path and bytes. A re-import whose fingerprint is stored here changes
-- nothing, so it skips parsing and loading and returns the stored summary.
CREATE TABLE import_fingerprints (
    dataset_id   VARCHAR PRIMARY KEY,
    fingerprint  VARCHAR NOT NULL,
    summary      JSON NOT NULL,
    imported_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);
