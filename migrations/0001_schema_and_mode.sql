-- 0001: the `sfm` schema, the database's mode (staging or operational) and the validation record.
--
-- The operator reads both tables from PostgreSQL itself before it switches a database to operational
-- (DESIGN section 3, "Activation"): status alone can be faked by anyone allowed to patch it, this table
-- cannot. Migrations are forward-only; never edit an applied file, add a new one.

CREATE SCHEMA IF NOT EXISTS sfm;

COMMENT ON SCHEMA sfm IS 'SFM staging data: an organisation''s history moved out of its old EPJ/FM system.';

-- One row, written by the operator right after the migrations: which MigrationDatabase owns this
-- database (its UID; the operator never adopts a database without its own tag) and its mode.
CREATE TABLE sfm.metadata (
    singleton              boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    mode                   text        NOT NULL DEFAULT 'staging'
                                       CHECK (mode IN ('staging', 'operational')),
    -- The data model version (the highest migration) the operator created the database at.
    data_model_version     bigint      NOT NULL CHECK (data_model_version > 0),
    -- metadata.uid of the MigrationDatabase custom resource.
    migration_database_uid uuid        NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    operational_at         timestamptz,
    CHECK ((mode = 'operational') = (operational_at IS NOT NULL))
);

COMMENT ON TABLE sfm.metadata IS
    'One row: the owning MigrationDatabase UID and the mode (staging: only the migration API writes).';

-- At most one row, written by the migration API's verify step (DESIGN step 33). Its digest is what a
-- Manual activation approves; once it exists the API refuses further uploads.
CREATE TABLE sfm.validation (
    singleton               boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    -- SHA-256 of the client's manifest (the list of files and their digests), raw 32 bytes.
    manifest_sha256         bytea       NOT NULL CHECK (octet_length(manifest_sha256) = 32),
    users_expected          integer     NOT NULL CHECK (users_expected >= 0),
    users_stored            integer     NOT NULL CHECK (users_stored >= 0),
    patients_expected       integer     NOT NULL CHECK (patients_expected >= 0),
    patients_stored         integer     NOT NULL CHECK (patients_stored >= 0),
    files_rejected          integer     NOT NULL CHECK (files_rejected >= 0),
    -- Key id (never the key) and HelseID client of whoever asked for the verification.
    migration_key_id        text        NOT NULL,
    helseid_client_id       text,
    validated_at            timestamptz NOT NULL DEFAULT now(),
    -- Set by the client's activate step (DESIGN step 34); the operator switches only after it.
    activation_requested_at timestamptz,
    CHECK (activation_requested_at IS NULL OR activation_requested_at >= validated_at)
);

COMMENT ON TABLE sfm.validation IS
    'At most one row: the verified migration (manifest digest and counts) the operator activates.';
