//! The names and labels of everything the operator makes for a MigrationDatabase or a MigrationKey,
//! in the one module that the operator and the migration API both read (neither learns a name from
//! the other's insides).
//!
//! Tenancy rests on two rules kept here:
//! - **A name never collides across MigrationDatabases.** Objects in the database's own namespace
//!   are named after the database (`<name>-application`, ...): unique, since names are unique in a
//!   namespace. Objects in the migration API's namespace serve every tenant, so they are named after
//!   the database's UID (`sfm-migrator-<uid>`), never after `<namespace>-<name>` (which `tenant-x` +
//!   `clinic` and `tenant` + `x-clinic` spell alike). PostgreSQL names carry eight hex digits of the
//!   UID and are tagged with the whole UID.
//! - **Nothing is reused on its name alone.** Every object carries the `sfm.nhn.no/database-uid`
//!   label ([`owned_by`]); an object of the right name without this database's UID is a name
//!   collision, never adopted, and the migration API never uses it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::crd::MigrationDatabase;
pub use crate::postgres::provision::DatabaseNames;

/// The field manager and `app.kubernetes.io/managed-by` value of everything the operator writes.
pub const MANAGER: &str = "sfm-operator";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// The MigrationDatabase an object belongs to (its name; the namespace is the object's own, or the
/// `database-namespace` label for objects in the migration API's namespace). For people and
/// selectors; ownership is decided by [`LABEL_DATABASE_UID`] alone.
pub const LABEL_DATABASE: &str = "sfm.nhn.no/database";
pub const LABEL_DATABASE_NAMESPACE: &str = "sfm.nhn.no/database-namespace";
/// `metadata.uid` of the MigrationDatabase the object was made for: what ownership is checked on.
pub const LABEL_DATABASE_UID: &str = "sfm.nhn.no/database-uid";
/// The key id of a MigrationKey (on the key and its Secret), what the migration API finds a key by.
pub const LABEL_KEY_ID: &str = "sfm.nhn.no/key-id";
/// SFM application pods carry this label with their database's name; the NetworkPolicy selects them.
pub const LABEL_APPLICATION_DATABASE: &str = "sfm.nhn.no/application-database";
/// Selects everything the operator manages.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=sfm-operator";

/// `app.kubernetes.io/component` of the migrator's Secret in the migration API's namespace.
pub const COMPONENT_MIGRATOR_CREDENTIALS: &str = "migrator-credentials";
pub const COMPONENT_APPLICATION_CREDENTIALS: &str = "application-credentials";
pub const COMPONENT_NETWORK_POLICY: &str = "network-policy";
pub const COMPONENT_ACCESS_ENTRY: &str = "access-entry";
pub const COMPONENT_MIGRATION_KEY: &str = "migration-key";

/// Fields of the credential Secrets the operator writes (`kubernetes.io/basic-auth` plus these).
pub const SECRET_FIELD_PASSWORD: &str = "password";
pub const SECRET_FIELD_URI: &str = "uri";
/// The key string's field in a MigrationKey's Secret.
pub const SECRET_FIELD_KEY: &str = "key";

/// The names of one MigrationDatabase's Kubernetes children and PostgreSQL objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildNames {
    /// The migrator's connection Secret, in the migration API's namespace.
    pub migrator_secret: String,
    /// Where releases before the UID-based name kept it (`sfm-<namespace>-<name>-migrator`): found
    /// and moved by the operator on its first pass after an upgrade, and read by the migration API
    /// (when its UID label is this database's) until then.
    pub legacy_migrator_secret: String,
    /// The application role's connection Secret, in the database's namespace.
    pub application_secret: String,
    /// The per-database NetworkPolicy, in the database's namespace.
    pub network_policy: String,
    /// The access entry (ConfigMap) the SFM application's router reads, in the database's namespace.
    pub access_entry: String,
    pub database: DatabaseNames,
}

impl ChildNames {
    pub fn of(db: &MigrationDatabase) -> ChildNames {
        ChildNames::new(
            &db.namespace().unwrap_or_default(),
            &db.name_any(),
            &db.uid().unwrap_or_default(),
        )
    }

    pub fn new(namespace: &str, name: &str, uid: &str) -> ChildNames {
        ChildNames {
            migrator_secret: migrator_secret_name(uid),
            legacy_migrator_secret: format!("sfm-{namespace}-{name}-migrator"),
            application_secret: format!("{name}-application"),
            network_policy: format!("{name}-sfm-database"),
            access_entry: format!("{name}-access"),
            database: DatabaseNames::new(namespace, name, uid),
        }
    }
}

/// The migrator's Secret in the migration API's namespace for the database with this UID (49
/// characters for a Kubernetes UID).
pub fn migrator_secret_name(uid: &str) -> String {
    format!("sfm-migrator-{uid}")
}

/// The Secret of a MigrationKey, in the key's namespace (owned by the key).
pub fn key_secret_name(key_name: &str) -> String {
    format!("{key_name}-key")
}

/// The recommended labels plus the database's own, on every child of a MigrationDatabase.
pub fn database_labels(db: &MigrationDatabase, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGER.to_owned()),
        (LABEL_PART_OF.to_owned(), "sfm-migration".to_owned()),
        (LABEL_COMPONENT.to_owned(), component.to_owned()),
        (LABEL_DATABASE.to_owned(), db.name_any()),
        (
            LABEL_DATABASE_NAMESPACE.to_owned(),
            db.namespace().unwrap_or_default(),
        ),
        (LABEL_DATABASE_UID.to_owned(), db.uid().unwrap_or_default()),
    ])
}

/// The labels of a MigrationKey's Secret: the key id, and the database it was issued for (name and
/// UID).
pub fn key_secret_labels(
    database_name: &str,
    database_uid: &str,
    key_id: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGER.to_owned()),
        (LABEL_PART_OF.to_owned(), "sfm-migration".to_owned()),
        (
            LABEL_COMPONENT.to_owned(),
            COMPONENT_MIGRATION_KEY.to_owned(),
        ),
        (LABEL_DATABASE.to_owned(), database_name.to_owned()),
        (LABEL_DATABASE_UID.to_owned(), database_uid.to_owned()),
        (LABEL_KEY_ID.to_owned(), key_id.to_owned()),
    ])
}

/// Whether an object was made for the MigrationDatabase with this UID (its
/// `sfm.nhn.no/database-uid` label). An empty UID owns nothing.
pub fn owned_by(meta: &ObjectMeta, uid: &str) -> bool {
    !uid.is_empty()
        && meta
            .labels
            .as_ref()
            .and_then(|labels| labels.get(LABEL_DATABASE_UID))
            .is_some_and(|label| label == uid)
}

/// Reads one text field of a Secret.
pub fn secret_field(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|value| String::from_utf8(value.0.clone()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_names_are_distinct_per_role_and_fit_postgres() {
        let names = DatabaseNames::new(
            "legekontor-oslo",
            "oslo",
            "1a2b3c4d-0000-0000-0000-000000000000",
        );
        assert_eq!(names.database, "sfm_legekontor_oslo_oslo_1a2b3c4d");
        assert_eq!(names.migrator, "sfm_legekontor_oslo_oslo_1a2b3c4d_migrator");
        let long = DatabaseNames::new(&"n".repeat(63), &"m".repeat(253), "ffffffff-0000");
        let all = [
            &long.database,
            &long.owner,
            &long.migrator,
            &long.application,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(a.len() <= 63, "{a} is too long");
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // A recreated object (new UID) gets a new database.
        assert_ne!(
            DatabaseNames::new("a", "b", "11111111").database,
            DatabaseNames::new("a", "b", "22222222").database
        );
    }

    /// Pairs of (namespace, name) that a name built from `<namespace>-<name>` cannot tell apart:
    /// they concatenate equal, or are equal after sanitising, or are cut to the same prefix.
    fn colliding_pairs() -> Vec<[(String, String); 2]> {
        let long_ns = "n".repeat(63);
        vec![
            [
                ("tenant-x".into(), "clinic".into()),
                ("tenant".into(), "x-clinic".into()),
            ],
            [("a-b".into(), "c-d".into()), ("a".into(), "b-c-d".into())],
            [("org".into(), "a.b".into()), ("org".into(), "a-b".into())],
            [
                (long_ns.clone(), format!("{}a", "m".repeat(200))),
                (long_ns, format!("{}b", "m".repeat(200))),
            ],
        ]
    }

    #[test]
    fn two_databases_whose_names_spell_alike_share_no_child_name() {
        for [(ns_a, name_a), (ns_b, name_b)] in colliding_pairs() {
            let a = ChildNames::new(&ns_a, &name_a, "0a0a0a0a-1111-2222-3333-444444444444");
            let b = ChildNames::new(&ns_b, &name_b, "0b0b0b0b-1111-2222-3333-444444444444");
            // In the API's namespace every tenant meets every other: names from the UID.
            assert_ne!(a.migrator_secret, b.migrator_secret);
            assert!(a.migrator_secret.len() <= 253);
            for (x, y) in [
                (&a.database.database, &b.database.database),
                (&a.database.owner, &b.database.owner),
                (&a.database.migrator, &b.database.migrator),
                (&a.database.application, &b.database.application),
            ] {
                assert_ne!(x, y, "{ns_a}/{name_a} and {ns_b}/{name_b}");
                assert!(x.len() <= 63 && y.len() <= 63);
            }
            // In the database's namespace the name is the database's own: unique in that namespace.
            if ns_a == ns_b {
                assert_ne!(a.application_secret, b.application_secret);
                assert_ne!(a.network_policy, b.network_policy);
                assert_ne!(a.access_entry, b.access_entry);
            }
        }
    }

    #[test]
    fn only_the_uid_label_makes_an_object_ours() {
        let meta = |labels: &[(&str, &str)]| ObjectMeta {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        assert!(owned_by(&meta(&[(LABEL_DATABASE_UID, "u1")]), "u1"));
        assert!(!owned_by(&meta(&[(LABEL_DATABASE_UID, "u2")]), "u1"));
        assert!(!owned_by(&meta(&[(LABEL_DATABASE, "clinic")]), "u1"));
        assert!(!owned_by(&ObjectMeta::default(), "u1"));
        assert!(!owned_by(&meta(&[(LABEL_DATABASE_UID, "")]), ""));
    }
}
