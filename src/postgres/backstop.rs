//! The staging database's own refusal of data after the validation: a statement trigger on every
//! data table, installed by the operator on every pass in staging, below the migration API's guard
//! (which any future writer could forget).

/// The SQLSTATE of [`REFUSE_AFTER_VALIDATION_FUNCTION`]'s refusal.
pub const VALIDATED_SQLSTATE: &str = "SFM01";

/// The backstop behind the migration API's own guard: in a staging database whose migration is
/// validated, no statement inserts into any table of the data (everything in `sfm` but the mode,
/// the validation record and the rejections). SQLSTATE `SFM01`, which the API answers as
/// `migration-validated`. Operational databases are not affected (the application writes there).
pub const REFUSE_AFTER_VALIDATION_FUNCTION: &str = "CREATE OR REPLACE FUNCTION sfm.refuse_after_validation() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    IF EXISTS (SELECT 1 FROM sfm.validation) AND EXISTS (SELECT 1 FROM sfm.metadata WHERE mode = 'staging') THEN
        RAISE EXCEPTION 'the migration is validated: nothing more is stored in this staging database'
            USING ERRCODE = 'SFM01';
    END IF;
    RETURN NULL;
END
$body$";

/// Attaches [`REFUSE_AFTER_VALIDATION_FUNCTION`] to every data table the schema has at its version
/// that lacks it (looked at on every pass, so a table a later migration adds is covered too, and a
/// trigger dropped, disabled or altered is made again).
///
/// Only where it is missing or not as made here: `CREATE OR REPLACE TRIGGER` takes `SHARE ROW
/// EXCLUSIVE` on its table until the pass commits. That waits for every ingest in flight on the
/// table, and every ingest after it waits for the pass: on every pass, all ingests of the database
/// stalled (a quarter of the migrator's sessions sampled in the flow benchmark waited on it).
/// `pg_get_triggerdef` names the table and function with their schema as long as `sfm` is not on
/// the session's `search_path` (it is not by default); were it, every trigger would look altered
/// and be made again on each pass: the old cost, never a missing trigger.
pub const REFUSE_AFTER_VALIDATION_TRIGGERS: &str = "DO $body$
DECLARE
    data_table text;
BEGIN
    FOR data_table IN
        SELECT t.tablename FROM pg_tables t
        WHERE t.schemaname = 'sfm'
          AND t.tablename NOT IN ('metadata', 'validation', 'rejections', 'dpop_proofs')
          AND left(t.tablename, 6) <> '_sqlx_'
          AND NOT EXISTS (
              SELECT 1 FROM pg_trigger g
              WHERE g.tgrelid = format('sfm.%I', t.tablename)::regclass
                AND g.tgname = 'refuse_after_validation'
                AND g.tgenabled = 'O'
                AND pg_get_triggerdef(g.oid) = format(
                    'CREATE TRIGGER refuse_after_validation BEFORE INSERT ON sfm.%I '
                    'FOR EACH STATEMENT EXECUTE FUNCTION sfm.refuse_after_validation()', t.tablename))
    LOOP
        EXECUTE format('CREATE OR REPLACE TRIGGER refuse_after_validation BEFORE INSERT ON sfm.%I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION sfm.refuse_after_validation()', data_table);
    END LOOP;
END
$body$";

/// Hands [`DPOP_PROOFS_TABLE`] to the role running the statement (the database's owner, see
/// `in_database`) when another role owns it. Only then: `ALTER TABLE ... OWNER` takes `ACCESS
/// EXCLUSIVE` even when the owner stays, which would hold up every DPoP-authenticated request
/// until the pass commits.
pub const DPOP_PROOFS_OWNER: &str = "DO $body$
BEGIN
    IF (SELECT relowner FROM pg_class WHERE oid = 'sfm.dpop_proofs'::regclass) <> current_user::regrole THEN
        EXECUTE format('ALTER TABLE sfm.dpop_proofs OWNER TO %I', current_user);
    END IF;
END
$body$";

/// The DPoP proofs the migration API has seen for this database (`jti`, when): every replica records
/// each proof here, so a proof replayed at another replica is refused. Not data of the SFM
/// application; outside the versioned schema, made on every pass like the backstop.
pub const DPOP_PROOFS_TABLE: &str = "CREATE TABLE IF NOT EXISTS sfm.dpop_proofs (
    jti     text        PRIMARY KEY CHECK (length(jti) <= 256),
    seen_at timestamptz NOT NULL DEFAULT now()
)";
