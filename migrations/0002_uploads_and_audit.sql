-- 0002: tus upload state shared by every migration API replica, the audit trail of stored files,
-- rejections and deviations.
--
-- Upload protocol on these tables (DESIGN section 6):
--   PATCH:  BEGIN; SELECT upload_offset FROM sfm.uploads WHERE id = $1 FOR UPDATE; compare with
--           Upload-Offset; INSERT the chunk at that offset; UPDATE upload_offset (and state); COMMIT.
--           The row lock serialises PATCHes landing on different replicas.
--   ingest: BEGIN; SELECT id FROM sfm.uploads WHERE state = 'complete' ORDER BY completed_at
--           FOR UPDATE SKIP LOCKED LIMIT 1; decrypt, parse, store; set state 'ingested' or 'rejected';
--           COMMIT. The row lock is the claim: if the replica dies, its transaction aborts, the lock
--           goes and the upload is 'complete' again for another replica. No 'ingesting' state to clean up.

CREATE TABLE sfm.uploads (
    id                uuid        PRIMARY KEY,
    -- tus metadata `name`: the path relative to the export folder, as in Index.txt.
    file_name         text        NOT NULL CHECK (file_name <> '' AND length(file_name) <= 1024),
    -- tus metadata `FileType` (organisation file, patient, report), as the client sent it.
    file_type         text        NOT NULL CHECK (length(file_type) <= 64),
    -- Upload-Length; the creation-defer-length extension is not offered.
    declared_length   bigint      NOT NULL CHECK (declared_length >= 0),
    upload_offset     bigint      NOT NULL DEFAULT 0
                                  CHECK (upload_offset >= 0 AND upload_offset <= declared_length),
    -- The remaining tus metadata. The migration key may travel in `SessionId` (NHN's uploader): it is
    -- a secret and must never be stored, so the constraint refuses it whatever the API does.
    metadata          jsonb       NOT NULL DEFAULT '{}'::jsonb
                                  CHECK (jsonb_typeof(metadata) = 'object'
                                         AND NOT (metadata ?| ARRAY['SessionId', 'sessionId', 'sessionid'])),
    state             text        NOT NULL DEFAULT 'created'
                                  CHECK (state IN ('created', 'receiving', 'complete', 'ingested', 'rejected')),
    -- Who sent it: the key id (never the key) and the HelseID client, when a token was required.
    migration_key_id  text        NOT NULL,
    helseid_client_id text,
    -- SHA-256 of the whole file as received (encrypted), set when the last byte arrives.
    sha256            bytea       CHECK (octet_length(sha256) = 32),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz,
    -- tus expiration extension: an unfinished upload is deleted after this.
    expires_at        timestamptz NOT NULL,
    CHECK ((state IN ('created', 'receiving')) = (completed_at IS NULL)),
    CHECK (state IN ('created', 'receiving') OR (upload_offset = declared_length AND sha256 IS NOT NULL))
);

COMMENT ON TABLE sfm.uploads IS
    'tus uploads; PATCH appends under a row lock, ingest claims complete uploads with SKIP LOCKED.';

-- The ingest queue: complete, not yet ingested, oldest first.
CREATE INDEX uploads_complete_idx ON sfm.uploads (completed_at) WHERE state = 'complete';
-- Expiry sweep of unfinished uploads.
CREATE INDEX uploads_unfinished_expires_idx ON sfm.uploads (expires_at) WHERE state IN ('created', 'receiving');

-- The bytes of an upload, one row per accepted PATCH, in offset order. Deleted with the upload.
CREATE TABLE sfm.upload_chunks (
    upload_id    uuid   NOT NULL REFERENCES sfm.uploads (id) ON DELETE CASCADE,
    chunk_offset bigint NOT NULL CHECK (chunk_offset >= 0),
    data         bytea  NOT NULL CHECK (octet_length(data) > 0),
    PRIMARY KEY (upload_id, chunk_offset)
);

-- Uploads are AES ciphertext: compressing them only costs CPU, so store them out of line uncompressed.
ALTER TABLE sfm.upload_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

COMMENT ON TABLE sfm.upload_chunks IS 'Bytes of a tus upload, one row per PATCH, keyed by offset.';

-- Every file that was decrypted, checked and stored: the audit trail (who sent it, when, its digest).
-- The digest is unique, so the same file uploaded twice is stored once.
CREATE TABLE sfm.stored_files (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind              text        NOT NULL CHECK (kind IN ('organisation', 'patient', 'report')),
    file_name         text        NOT NULL CHECK (file_name <> ''),
    size_bytes        bigint      NOT NULL CHECK (size_bytes >= 0),
    sha256            bytea       NOT NULL UNIQUE CHECK (octet_length(sha256) = 32),
    migration_key_id  text        NOT NULL,
    helseid_client_id text,
    upload_id         uuid        REFERENCES sfm.uploads (id) ON DELETE SET NULL,
    received_at       timestamptz NOT NULL,
    stored_at         timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE sfm.stored_files IS
    'Audit trail: each stored file with its sender (key id, HelseID client), time and SHA-256.';

CREATE INDEX stored_files_kind_idx ON sfm.stored_files (kind);
CREATE INDEX stored_files_upload_idx ON sfm.stored_files (upload_id);

-- Files the API refused (bad envelope, zip bomb, DOCTYPE, schema, unknown HPR, ...). The message must
-- not contain personal data: it is shown in status and to the data controller.
CREATE TABLE sfm.rejections (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    upload_id         uuid        REFERENCES sfm.uploads (id) ON DELETE SET NULL,
    file_name         text        NOT NULL CHECK (file_name <> ''),
    sha256            bytea       CHECK (octet_length(sha256) = 32),
    -- A stable machine-readable code, e.g. `envelope_undecryptable`, `doctype_forbidden`.
    reason_code       text        NOT NULL CHECK (reason_code ~ '^[a-z][a-z0-9_]{0,63}$'),
    message           text        NOT NULL CHECK (length(message) <= 2000),
    migration_key_id  text        NOT NULL,
    helseid_client_id text,
    rejected_at       timestamptz NOT NULL DEFAULT now(),
    -- A later upload of the same file name that was stored resolves the rejection.
    resolved          boolean     NOT NULL DEFAULT false,
    resolved_at       timestamptz,
    CHECK (resolved = (resolved_at IS NOT NULL))
);

COMMENT ON TABLE sfm.rejections IS 'Refused files with a reason code and a message free of personal data.';

CREATE INDEX rejections_unresolved_idx ON sfm.rejections (file_name) WHERE NOT resolved;

-- Where a stored file drifted from the XSD but was accepted under a lenient policy (DESIGN section 5).
CREATE TABLE sfm.deviations (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stored_file_id bigint      NOT NULL REFERENCES sfm.stored_files (id) ON DELETE CASCADE,
    -- The file inside the zip, e.g. PatientData.xml.
    entry_name     text        NOT NULL,
    -- Element path of the deviation, e.g. /PasientExport/Brukere.
    path           text        NOT NULL,
    message        text        NOT NULL CHECK (length(message) <= 2000),
    recorded_at    timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE sfm.deviations IS 'Schema deviations of accepted files: file, element path, message.';

CREATE INDEX deviations_stored_file_idx ON sfm.deviations (stored_file_id);
