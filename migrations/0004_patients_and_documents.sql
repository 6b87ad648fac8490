-- 0004: patients (PasientExport) with their identifiers, allergies, treatments and messages, and the
-- raw documents: ExportData.xml, each PatientData.xml and each message XML, kept exactly as received.
--
-- The FM GUID (PasientExport/Id, also the .pat file name) is the patient's natural key: ingest does
-- INSERT ... ON CONFLICT (fm_id) DO UPDATE, so the same file twice, or a re-export, stores one patient.
-- A re-ingest replaces the children; they all hang off the patient with ON DELETE CASCADE.

CREATE TABLE sfm.patients (
    id                      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fm_id                   uuid        NOT NULL UNIQUE,
    family_name             text        NOT NULL,
    middle_name             text,
    given_name              text        NOT NULL,
    -- Sex/@V (1 = mann, 2 = kvinne, 9 = ikke relevant).
    sex_code                text,
    date_of_birth           date,
    -- Fastlege/HprId and MultidoseAnsvarligLege/HprId; ingest checks each names a user.
    gp_hpr                  text        CHECK (gp_hpr ~ '^[0-9]{1,9}$'),
    multidose_hpr           text        CHECK (multidose_hpr ~ '^[0-9]{1,9}$'),
    -- PLOInformasjon/HerId: the nursing and care service (pleie og omsorg) responsible, if any.
    plo_her_id              text,
    -- The file this version of the patient came from (name and digest live there, with the sender).
    stored_file_id          bigint      NOT NULL REFERENCES sfm.stored_files (id),
    source_file_name        text        NOT NULL CHECK (source_file_name <> ''),
    source_sha256           bytea       NOT NULL CHECK (octet_length(source_sha256) = 32),
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE sfm.patients IS 'One row per FM patient GUID; re-ingesting a file updates the row.';

CREATE INDEX patients_stored_file_idx ON sfm.patients (stored_file_id);
CREATE INDEX patients_gp_hpr_idx ON sfm.patients (gp_hpr) WHERE gp_hpr IS NOT NULL;
CREATE INDEX patients_multidose_hpr_idx ON sfm.patients (multidose_hpr) WHERE multidose_hpr IS NOT NULL;

-- DemografiskInfo/Ident: FNR, D-number, H-number, or other ids (TypeId/@V, e.g. FNR, DNR, HNR, XXX).
CREATE TABLE sfm.patient_identifiers (
    patient_id  bigint NOT NULL REFERENCES sfm.patients (id) ON DELETE CASCADE,
    type_code   text   NOT NULL CHECK (type_code <> ''),
    -- TypeId/@S, the code system OID.
    type_system text   NOT NULL DEFAULT '',
    value       text   NOT NULL CHECK (value <> ''),
    PRIMARY KEY (patient_id, type_code, value)
);

COMMENT ON TABLE sfm.patient_identifiers IS 'Identifiers of a patient; the value index finds one person under two FM Ids.';

-- "Is this FNR already stored under another patient GUID?" is a lookup by value.
CREATE INDEX patient_identifiers_value_idx ON sfm.patient_identifiers (value, type_code);

-- Legemiddelreaksjon: a drug reaction (allergy, CAVE). History versions share a GruppeId.
CREATE TABLE sfm.allergies (
    id                bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id        bigint  NOT NULL REFERENCES sfm.patients (id) ON DELETE CASCADE,
    fm_id             text    NOT NULL CHECK (fm_id <> ''),
    group_id          text    NOT NULL,
    head_of_history   boolean NOT NULL,
    -- SistOppdatertDato.
    last_updated_on   date    NOT NULL,
    -- RegistrertAv (a user id).
    registered_by     text,
    discarded         boolean NOT NULL DEFAULT false,
    -- Deleted/Reason/@V; NULL when not deleted.
    deleted_reason    text,
    deleted_by        text,
    UNIQUE (patient_id, fm_id)
);

COMMENT ON TABLE sfm.allergies IS 'Legemiddelreaksjon entries (drug reactions, CAVE) of a patient.';

-- Behandlinger: one row per treatment, whatever its kind; details stay in PatientData.xml.
CREATE TABLE sfm.treatments (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id  bigint NOT NULL REFERENCES sfm.patients (id) ON DELETE CASCADE,
    -- medicine = Legemiddelbehandling, nutrition = NIBBehandling (næringsmiddel),
    -- medical_supply = FIBBehandling (forbruksmateriell), vaccine = VaksineBehandling.
    kind        text   NOT NULL CHECK (kind IN ('medicine', 'nutrition', 'medical_supply', 'vaccine')),
    -- LibId: the treatment's id in the patient's medication list (legemiddelbehandling-id).
    lib_id      text   NOT NULL CHECK (lib_id <> ''),
    -- DatoOppstart.
    started_on  date   NOT NULL,
    -- PrescriptionDetails/.../Id of the latest prescription, when there is one.
    prescription_id text,
    UNIQUE (patient_id, lib_id)
);

COMMENT ON TABLE sfm.treatments IS 'Behandlinger of a patient: medicine, nutrition, medical supply, vaccine.';

-- Meldinger/Melding: metadata of an e-prescription message; its XML is a document below.
CREATE TABLE sfm.messages (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id     bigint      NOT NULL REFERENCES sfm.patients (id) ON DELETE CASCADE,
    fm_id          text        NOT NULL CHECK (fm_id <> ''),
    parent_fm_id   text,
    -- Korrespondance: the message was exchanged with another party.
    correspondence boolean     NOT NULL,
    state          text        NOT NULL,
    msg_id         text        NOT NULL,
    -- Type/@V, e.g. ERM1 (resept), ERM7, AppRec.
    msg_type       text        NOT NULL,
    generated_at   timestamp   NOT NULL,
    -- MeldingsFil: the XML file inside the .pat zip.
    file_name      text        NOT NULL CHECK (file_name <> ''),
    UNIQUE (patient_id, fm_id)
);

COMMENT ON TABLE sfm.messages IS 'Meldinger of a patient: message metadata; the XML is in sfm.documents.';

CREATE INDEX messages_msg_id_idx ON sfm.messages (msg_id);

-- The XML documents as received (after decryption and unzipping): byte-exact, so nothing the importer
-- does not understand yet is lost. lz4 stores 100 KB documents about twice as fast as pglz (DESIGN
-- section 5 measurements); the server must be built with lz4, and hack/postgres.sh checks that.
CREATE TABLE sfm.documents (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stored_file_id bigint NOT NULL REFERENCES sfm.stored_files (id) ON DELETE CASCADE,
    -- NULL for the organisation file's ExportData.xml and for reports.
    patient_id     bigint REFERENCES sfm.patients (id) ON DELETE CASCADE,
    message_id     bigint REFERENCES sfm.messages (id) ON DELETE CASCADE,
    kind           text   NOT NULL CHECK (kind IN ('organisation_data', 'patient_data', 'message', 'report')),
    -- The entry name inside the zip, e.g. PatientData.xml or <guid>.xml.
    entry_name     text   NOT NULL CHECK (entry_name <> ''),
    size_bytes     bigint NOT NULL CHECK (size_bytes >= 0),
    sha256         bytea  NOT NULL CHECK (octet_length(sha256) = 32),
    content        bytea  COMPRESSION lz4 NOT NULL,
    CHECK (octet_length(content) = size_bytes),
    CHECK ((kind IN ('patient_data', 'message')) = (patient_id IS NOT NULL)),
    CHECK ((kind = 'message') = (message_id IS NOT NULL)),
    UNIQUE (stored_file_id, entry_name)
);

COMMENT ON TABLE sfm.documents IS 'Raw XML documents exactly as received, lz4-compressed.';

CREATE INDEX documents_patient_idx ON sfm.documents (patient_id) WHERE patient_id IS NOT NULL;
CREATE INDEX documents_message_idx ON sfm.documents (message_id) WHERE message_id IS NOT NULL;
