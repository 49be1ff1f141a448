-- Model inputs: one row per (volume, recipe, version), pointing at a content-addressed file
-- (<inputs>/<recipe>/<version>/<volume sha256[:2]>/<volume sha256>.npy|npz). A volume that could not be
-- used gets status 'failed' and the reason, for every recipe asked of it.
CREATE TABLE model_inputs (
    dataset_id     VARCHAR NOT NULL,
    volume         VARCHAR NOT NULL,
    recipe         VARCHAR NOT NULL,
    version        VARCHAR NOT NULL,
    status         VARCHAR NOT NULL,
    reason         VARCHAR,
    source_path    VARCHAR,
    volume_sha256  VARCHAR,
    path           VARCHAR,
    shape          INTEGER[],
    dtype          VARCHAR,
    sha256         VARCHAR,                    -- of the output file
    patient_left   VARCHAR,                    -- e.g. 'axis 3, high index'
    seconds        DOUBLE,
    created_at     TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset_id, volume, recipe, version),
    CHECK (status IN ('ok', 'failed')),
    CHECK ((status = 'ok') = (path IS NOT NULL))
);
