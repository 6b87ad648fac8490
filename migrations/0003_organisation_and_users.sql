-- 0003: the organisation, its institutions and its users, from the organisation file
-- (ExportData.dat: `ExportImport` with `Institusjon` and `Brukere/Helseperson`).
--
-- They are stored before any patient (DESIGN steps 21-28): patients refer to users by HPR number.
-- Personal data (names, FNR, HPR) is stored here on purpose; it must never leave through logs or errors.

-- One row: the organisation being migrated and the HelseID client that gets access when operational.
CREATE TABLE sfm.organisation (
    singleton           boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    name                text        NOT NULL CHECK (name <> ''),
    -- Organisasjonsnummer: nine digits (the mod-11 check is done in code, where errors are explained).
    organisation_number text        NOT NULL CHECK (organisation_number ~ '^[0-9]{9}$'),
    -- HER-id in the Adresseregister.
    her_id              text        CHECK (her_id ~ '^[0-9]{1,9}$'),
    helseid_client_id   text        NOT NULL CHECK (helseid_client_id <> ''),
    -- The organisation file it came from; NULL while only the operator has written the row.
    stored_file_id      bigint      REFERENCES sfm.stored_files (id),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE sfm.organisation IS 'One row: the organisation (name, organisation number, HER-id, HelseID client).';

-- Institusjon: a unit of the organisation (legekontor, sykehjem).
CREATE TABLE sfm.institutions (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Institusjon/Id in the export (a GUID in practice, kept as text since the XSD says string).
    fm_id               text   NOT NULL UNIQUE CHECK (fm_id <> ''),
    name                text   NOT NULL,
    her_id              text,
    organisation_number text,
    stored_file_id      bigint NOT NULL REFERENCES sfm.stored_files (id)
);

COMMENT ON TABLE sfm.institutions IS 'Institusjon entries of the organisation file.';

-- Helseperson: a user of the old system.
CREATE TABLE sfm.users (
    id                bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Helseperson/Id in the export; patient data refers to users by it (BrukerId).
    fm_id             text    NOT NULL UNIQUE CHECK (fm_id <> ''),
    -- Brukernavn.
    username          text    NOT NULL,
    -- Brukertype, the user's role in the old system (Doctor, Assistant, Admin; may be empty).
    role              text    NOT NULL DEFAULT '',
    active            boolean NOT NULL,
    family_name       text,
    middle_name       text,
    given_name        text,
    date_of_birth     date,
    -- Fødselsnummer or D-number (Ident with TypeId FNR/DNR).
    fnr               text    CHECK (fnr ~ '^[0-9]{11}$'),
    -- HPR number (Ident with TypeId HPR); no public check digit, format only.
    hpr               text    CHECK (hpr ~ '^[0-9]{1,9}$'),
    -- TypeHealthcareProfessional code (LE = lege, SP = sykepleier, ...).
    profession_code   text,
    -- Spesialitet codes.
    specialities      text[]  NOT NULL DEFAULT '{}',
    -- ForskrivningsrettAB.
    prescribing_right text,
    stored_file_id    bigint  NOT NULL REFERENCES sfm.stored_files (id)
);

COMMENT ON TABLE sfm.users IS 'Helseperson entries of the organisation file (FNR and HPR included).';

-- Patients name their GP and multidose doctor by HPR; ingest checks each against this index.
CREATE INDEX users_hpr_idx ON sfm.users (hpr) WHERE hpr IS NOT NULL;
CREATE INDEX users_fnr_idx ON sfm.users (fnr) WHERE fnr IS NOT NULL;
