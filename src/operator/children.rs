//! The one place that builds what the operator creates: labels, owner references, the credential
//! Secrets, the per-database NetworkPolicy and the access entry. Pure functions over plain data.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::MigrationDatabase;

pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// The MigrationDatabase an object belongs to (its name; the namespace is the object's own, or the
/// `database-namespace` label for objects in the migration API's namespace).
pub const LABEL_DATABASE: &str = "sfm.nhn.no/database";
pub const LABEL_DATABASE_NAMESPACE: &str = "sfm.nhn.no/database-namespace";
pub const LABEL_DATABASE_UID: &str = "sfm.nhn.no/database-uid";
/// The key id of a MigrationKey's Secret, what the migration API finds a key by.
pub const LABEL_KEY_ID: &str = "sfm.nhn.no/key-id";
/// SFM application pods carry this label with their database's name; the NetworkPolicy selects them.
pub const LABEL_APPLICATION_DATABASE: &str = "sfm.nhn.no/application-database";
/// Selects everything the operator manages.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=sfm-operator";

/// The recommended labels plus the database's own, on every child.
pub fn labels(db: &MigrationDatabase, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), super::FIELD_MANAGER.to_owned()),
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

/// An owner reference to the MigrationDatabase (same namespace only).
pub fn owner(db: &MigrationDatabase) -> Vec<OwnerReference> {
    db.controller_owner_ref(&()).into_iter().collect()
}

/// The name of the application role's Secret in the database's namespace.
pub fn application_secret_name(db: &MigrationDatabase) -> String {
    format!("{}-application", db.name_any())
}

/// The name of the migrator's Secret in the migration API's namespace: namespace and name of the
/// database, so databases of different namespaces never share one.
pub fn migrator_secret_name(db: &MigrationDatabase) -> String {
    let name = format!(
        "sfm-{}-{}-migrator",
        db.namespace().unwrap_or_default(),
        db.name_any()
    );
    if name.len() <= 253 {
        name
    } else {
        format!("sfm-migrator-{}", db.uid().unwrap_or_default())
    }
}

/// Connection details for one role: a `kubernetes.io/basic-auth` Secret with host, port, dbname
/// and a URI as well.
pub struct Credentials<'a> {
    pub username: &'a str,
    pub password: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub database: &'a str,
}

pub fn credentials_secret(
    name: &str,
    namespace: &str,
    labels: BTreeMap<String, String>,
    owner_references: Vec<OwnerReference>,
    credentials: &Credentials,
) -> Secret {
    let uri = format!(
        "postgres://{}:{}@{}:{}/{}",
        credentials.username,
        credentials.password,
        credentials.host,
        credentials.port,
        credentials.database
    );
    let data = BTreeMap::from([
        ("username".to_owned(), credentials.username.to_owned()),
        ("password".to_owned(), credentials.password.to_owned()),
        ("host".to_owned(), credentials.host.to_owned()),
        ("port".to_owned(), credentials.port.to_string()),
        ("dbname".to_owned(), credentials.database.to_owned()),
        ("uri".to_owned(), uri),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            owner_references: (!owner_references.is_empty()).then_some(owner_references),
            ..Default::default()
        },
        type_: Some("kubernetes.io/basic-auth".to_owned()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Reads one text field of a Secret.
pub fn secret_field(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|value| String::from_utf8(value.0.clone()).ok())
}

/// The per-database NetworkPolicy: it selects the SFM application pods labelled for this database.
/// In staging they may reach DNS only, so they cannot reach the database server; once operational
/// they may also reach the server (its CIDR when known, else any address) on the server port.
pub fn network_policy(db: &MigrationDatabase, operational: bool) -> NetworkPolicy {
    let dns = NetworkPolicyEgressRule {
        ports: Some(vec![
            NetworkPolicyPort {
                port: Some(IntOrString::Int(53)),
                protocol: Some("UDP".into()),
                ..Default::default()
            },
            NetworkPolicyPort {
                port: Some(IntOrString::Int(53)),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        to: None,
    };
    let mut egress = vec![dns];
    if operational {
        let settings = &db.spec.network_policy;
        egress.push(NetworkPolicyEgressRule {
            ports: Some(vec![NetworkPolicyPort {
                port: Some(IntOrString::Int(settings.server_port)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            to: settings.server_cidr.as_ref().map(|cidr| {
                vec![NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: cidr.clone(),
                        except: None,
                    }),
                    ..Default::default()
                }]
            }),
        });
    }
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(format!("{}-sfm-database", db.name_any())),
            namespace: db.namespace(),
            labels: Some(labels(db, "network-policy")),
            owner_references: Some(owner(db)),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    LABEL_APPLICATION_DATABASE.to_owned(),
                    db.name_any(),
                )])),
                ..Default::default()
            }),
            policy_types: Some(vec!["Egress".to_owned()]),
            egress: Some(egress),
            ingress: None,
        }),
    }
}

/// The access entry the SFM application's router reads once the database is operational: the
/// organisation's HelseID client id, the database and the application Secret. Holds no secret.
pub fn access_entry(db: &MigrationDatabase, database_name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(format!("{}-access", db.name_any())),
            namespace: db.namespace(),
            labels: Some({
                let mut labels = labels(db, "access-entry");
                labels.insert("sfm.nhn.no/access-entry".to_owned(), "true".to_owned());
                labels
            }),
            owner_references: Some(owner(db)),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (
                "helseIdClientId".to_owned(),
                db.spec.organisation.helse_id_client_id.clone(),
            ),
            (
                "organisationNumber".to_owned(),
                db.spec.organisation.organisation_number.clone(),
            ),
            ("database".to_owned(), database_name.to_owned()),
            ("applicationSecret".to_owned(), application_secret_name(db)),
        ])),
        ..Default::default()
    }
}
