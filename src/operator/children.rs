//! The one place that builds what the operator creates: owner references, the credential Secrets,
//! the per-database NetworkPolicy and the access entry. Pure functions over plain data; their names
//! and labels come from [`crate::names`].

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
use crate::names::{self, ChildNames, LABEL_APPLICATION_DATABASE};

/// What a pass expects under its children's names. It picks only which call comes first: a child
/// expected [`Expected::Absent`] is created and read only when the create meets an object of its
/// name (409); one expected [`Expected::Present`] is read first. Both paths refuse an object not
/// made for this database (its UID label) before anything in it is read or changed, so a wrong
/// guess costs a call, never safety.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    Absent,
    Present,
}

/// [`Expected::Absent`] for a database without `status.phase`. Every pass, of this release and of
/// the earlier ones, writes `Provisioning` before it makes any child, and nothing writes the phase
/// away again, so no operator has made a child for this UID yet; a new object under an old name has
/// a new UID and no phase. Only a status cleared by hand, or a cache behind the status write of an
/// earlier pass, gets this wrong: then the create meets the child and the pass reads it as usual.
pub fn expected(db: &MigrationDatabase) -> Expected {
    match db.status.as_ref().and_then(|s| s.phase) {
        None => Expected::Absent,
        Some(_) => Expected::Present,
    }
}

/// An owner reference to the MigrationDatabase (same namespace only).
pub fn owner(db: &MigrationDatabase) -> Vec<OwnerReference> {
    db.controller_owner_ref(&()).into_iter().collect()
}

/// Connection details for one role: a `kubernetes.io/basic-auth` Secret with host, port, dbname
/// and a URI as well.
pub struct Credentials<'a> {
    pub username: &'a str,
    pub password: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub database: &'a str,
    /// libpq's `sslmode`, as the admin URI has it.
    pub ssl_mode: &'a str,
}

pub fn credentials_secret(
    name: &str,
    namespace: &str,
    labels: BTreeMap<String, String>,
    owner_references: Vec<OwnerReference>,
    credentials: &Credentials,
) -> Secret {
    let uri = format!(
        "postgres://{}:{}@{}:{}/{}?sslmode={}",
        credentials.username,
        credentials.password,
        credentials.host,
        credentials.port,
        credentials.database,
        credentials.ssl_mode
    );
    let data = BTreeMap::from([
        ("username".to_owned(), credentials.username.to_owned()),
        (
            names::SECRET_FIELD_PASSWORD.to_owned(),
            credentials.password.to_owned(),
        ),
        ("host".to_owned(), credentials.host.to_owned()),
        ("port".to_owned(), credentials.port.to_string()),
        ("dbname".to_owned(), credentials.database.to_owned()),
        ("sslmode".to_owned(), credentials.ssl_mode.to_owned()),
        (names::SECRET_FIELD_URI.to_owned(), uri),
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
            name: Some(ChildNames::of(db).network_policy),
            namespace: db.namespace(),
            labels: Some(names::database_labels(db, names::COMPONENT_NETWORK_POLICY)),
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
            name: Some(ChildNames::of(db).access_entry),
            namespace: db.namespace(),
            labels: Some({
                let mut labels = names::database_labels(db, names::COMPONENT_ACCESS_ENTRY);
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
            (
                "applicationSecret".to_owned(),
                ChildNames::of(db).application_secret,
            ),
        ])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{MigrationDatabaseStatus, Phase};

    /// Only a database no pass has written a phase for expects no children; `Pending` and
    /// `Failed` are written by failed passes, which may have made some.
    #[test]
    fn only_a_database_without_a_phase_expects_no_children() {
        let spec = serde_json::from_value(serde_json::json!({
            "organisation": {"name": "Test", "organisationNumber": "974600951", "helseIdClientId": "c"},
            "dataModelVersion": 4,
        }))
        .unwrap();
        let mut db = MigrationDatabase::new("db", spec);
        assert_eq!(expected(&db), Expected::Absent, "no status");
        let table = [
            (None, Expected::Absent),
            (Some(Phase::Pending), Expected::Present),
            (Some(Phase::Provisioning), Expected::Present),
            (Some(Phase::Failed), Expected::Present),
            (Some(Phase::Staging), Expected::Present),
            (Some(Phase::Operational), Expected::Present),
        ];
        for (phase, wanted) in table {
            db.status = Some(MigrationDatabaseStatus {
                phase,
                ..Default::default()
            });
            assert_eq!(expected(&db), wanted, "{phase:?}");
        }
    }
}
