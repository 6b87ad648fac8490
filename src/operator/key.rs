//! Reconciling MigrationKeys: each gets a Secret holding `sfmk_<keyId>_<secret>` (owned by the key),
//! its digest in status, and a phase. Only the newest unrevoked, unexpired key of a database is
//! Active; keys expire after their time to live and when the database goes operational.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::{Context, Error, FIELD_MANAGER};
use crate::contract::MigrationKeyToken;
use crate::crd::{
    KeyPhase, MigrationDatabase, MigrationKey, MigrationKeyStatus, Phase, apply_status,
};
use crate::names::{self, LABEL_KEY_ID};

/// The key string's field in the Secret.
pub const SECRET_KEY_FIELD: &str = names::SECRET_FIELD_KEY;

/// What decides a key's phase, for one key.
#[derive(Clone, Debug)]
pub struct KeyFacts {
    pub name: String,
    pub created: jiff::Timestamp,
    pub expires: jiff::Timestamp,
    pub revoked: bool,
    /// The database is `Activating` and the key is already Expired: the switch expired it (its last
    /// step before `Operational`), and it stays so; it is never made Active again.
    pub expired_by_switch: bool,
}

/// The phase of every key of one database: revoked keys are Revoked; with the database operational
/// every other key is Expired; past its expiry, or expired by the switch, a key is Expired; of the
/// rest, the newest (by creation, then name) is Active and the others are Superseded.
pub fn key_phases(
    keys: &[KeyFacts],
    database_operational: bool,
    now: jiff::Timestamp,
) -> Vec<(String, KeyPhase)> {
    let newest = keys
        .iter()
        .filter(|k| !k.revoked && !database_operational && !k.expired_by_switch && k.expires > now)
        .max_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)))
        .map(|k| k.name.clone());
    keys.iter()
        .map(|k| {
            let phase = if k.revoked {
                KeyPhase::Revoked
            } else if database_operational || k.expired_by_switch || k.expires <= now {
                KeyPhase::Expired
            } else if Some(&k.name) == newest.as_ref() {
                KeyPhase::Active
            } else {
                KeyPhase::Superseded
            };
            (k.name.clone(), phase)
        })
        .collect()
}

fn secret_name(key: &MigrationKey) -> String {
    names::key_secret_name(&key.name_any())
}

/// The UID of the database a key was issued for, once bound.
pub fn bound_database_uid(key: &MigrationKey) -> Option<&str> {
    key.status.as_ref().and_then(|s| s.database_uid.as_deref())
}

/// Whether a key belongs to the database with this UID: bound to it, or not bound yet (issued
/// before its database existed, or by a release that did not bind keys; the next pass binds it).
pub fn belongs_to(key: &MigrationKey, database_uid: &str) -> bool {
    bound_database_uid(key).is_none_or(|uid| uid == database_uid)
}

fn facts(key: &MigrationKey, database_activating: bool) -> Result<KeyFacts, Error> {
    let created = key
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(jiff::Timestamp::now);
    let ttl =
        kube::core::Duration::from_str(&key.spec.time_to_live).map_err(|_| Error::Config {
            reason: "InvalidTimeToLive",
            message: format!("timeToLive {:?} is not a duration", key.spec.time_to_live),
        })?;
    let ttl: std::time::Duration = ttl.into();
    let expires = created
        .checked_add(jiff::SignedDuration::try_from(ttl).unwrap_or(jiff::SignedDuration::ZERO))
        .unwrap_or(created);
    Ok(KeyFacts {
        name: key.name_any(),
        created,
        expires,
        revoked: key.spec.revoked,
        expired_by_switch: database_activating
            && key.status.as_ref().and_then(|s| s.phase) == Some(KeyPhase::Expired),
    })
}

pub async fn reconcile(key: Arc<MigrationKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = key.namespace().unwrap_or_default();
    let keys: Api<MigrationKey> = Api::namespaced(ctx.client.clone(), &namespace);
    let databases: Api<MigrationDatabase> = Api::namespaced(ctx.client.clone(), &namespace);
    let database = databases.get_opt(&key.spec.database_ref).await?;
    let database_uid = database.as_ref().and_then(|db| db.uid());
    // A key is bound to the database it was issued for; a database of the same name created
    // after that one was deleted is another database, and the key never works for it.
    if let Some(bound) = bound_database_uid(&key)
        && database_uid.as_deref() != Some(bound)
    {
        patch_key_status(
            &keys,
            &key,
            status_with(
                &key,
                KeyPhase::Expired,
                "the MigrationDatabase this key was issued for was deleted; the key never works for another database",
            ),
        )
        .await?;
        return Ok(Action::requeue(ctx.config.resync));
    }
    let (Some(db), Some(database_uid)) = (database, database_uid) else {
        let message = format!(
            "the MigrationDatabase {} does not exist in this namespace",
            key.spec.database_ref
        );
        patch_key_status(
            &keys,
            &key,
            MigrationKeyStatus {
                phase: Some(KeyPhase::Pending),
                message: Some(message),
                ..Default::default()
            },
        )
        .await?;
        return Ok(Action::requeue(Duration::from_secs(30)));
    };

    // The Secret first: the key exists in exactly one place, owned by the MigrationKey.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let token = match secrets.get_opt(&secret_name(&key)).await? {
        Some(secret) => read_owned_token(&secret, &key)?,
        None => create_secret(&secrets, &key, &database_uid).await?,
    };

    let database_phase = db.status.as_ref().and_then(|s| s.phase);
    let operational = database_phase == Some(Phase::Operational);
    let activating = database_phase == Some(Phase::Activating);
    let siblings: Vec<MigrationKey> = keys
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|k| k.spec.database_ref == key.spec.database_ref && belongs_to(k, &database_uid))
        .collect();
    let all_facts = siblings
        .iter()
        .map(|k| facts(k, activating))
        .collect::<Result<Vec<_>, _>>()?;
    let now = jiff::Timestamp::now();
    let phases = key_phases(&all_facts, operational, now);
    let mine = all_facts
        .iter()
        .find(|f| f.name == key.name_any())
        .cloned()
        .unwrap_or(facts(&key, activating)?);
    let my_phase = phases
        .iter()
        .find(|(n, _)| *n == key.name_any())
        .map(|(_, p)| *p)
        .unwrap_or(KeyPhase::Pending);

    // The key id as a label on the MigrationKey, so the migration API finds it with a label selector.
    let key_id = token.key_id();
    if key.labels().get(LABEL_KEY_ID).map(String::as_str) != Some(key_id) {
        let label = json!({"metadata": {"labels": {LABEL_KEY_ID: key_id}}});
        keys.patch(
            &key.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&label),
        )
        .await?;
    }

    patch_key_status(
        &keys,
        &key,
        MigrationKeyStatus {
            phase: Some(my_phase),
            message: Some(phase_message(my_phase).to_owned()),
            key_id: Some(token.key_id().to_owned()),
            database_uid: Some(database_uid.clone()),
            digest: Some(token.digest_hex()),
            secret_name: Some(secret_name(&key)),
            issued_at: Some(mine.created.to_string()),
            expires_at: Some(mine.expires.to_string()),
            observed_generation: key.metadata.generation,
        },
    )
    .await?;

    // Siblings whose phase changed because of this key (superseded by it) are updated now, not at
    // their next resync, so an older key stops showing Active at once.
    for sibling in siblings.iter().filter(|k| k.name_any() != key.name_any()) {
        let want = phases
            .iter()
            .find(|(n, _)| *n == sibling.name_any())
            .map(|(_, p)| *p);
        let have = sibling.status.as_ref().and_then(|s| s.phase);
        if let Some(want) = want
            && Some(want) != have
            && have.is_some()
        {
            patch_key_status(
                &keys,
                sibling,
                status_with(sibling, want, phase_message(want)),
            )
            .await?;
        }
    }

    let until_expiry = (mine.expires - now).get_seconds().max(1) as u64;
    Ok(Action::requeue(
        Duration::from_secs(until_expiry).min(ctx.config.resync),
    ))
}

/// The key's whole status with another phase and message. Every status write is a server-side
/// apply by the operator's field manager, which drops any field it owned and leaves out: a write of
/// the phase alone would lose the key id, the digest and the database the key is bound to.
pub fn status_with(key: &MigrationKey, phase: KeyPhase, message: &str) -> MigrationKeyStatus {
    let mut status = key.status.clone().unwrap_or_default();
    status.phase = Some(phase);
    status.message = Some(message.to_owned());
    status
}

fn phase_message(phase: KeyPhase) -> &'static str {
    match phase {
        KeyPhase::Pending => "waiting for the MigrationDatabase",
        KeyPhase::Active => "this key fills the database",
        KeyPhase::Superseded => "a newer key of the same database replaced this one",
        KeyPhase::Expired => "the key's time to live ran out or the database is operational",
        KeyPhase::Revoked => "revoked by an operator",
    }
}

/// The token in the key's Secret, if the Secret is the key's own (its controller owner reference):
/// a Secret of that name planted by someone else is a name collision, never read.
fn read_owned_token(secret: &Secret, key: &MigrationKey) -> Result<MigrationKeyToken, Error> {
    let owned = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|owner| {
            owner.controller == Some(true) && Some(&owner.uid) == key.metadata.uid.as_ref()
        });
    if !owned {
        return Err(Error::NameCollision {
            kind: "Secret".to_owned(),
            name: secret.name_any(),
        });
    }
    read_token(secret)
}

fn read_token(secret: &Secret) -> Result<MigrationKeyToken, Error> {
    let text = names::secret_field(secret, SECRET_KEY_FIELD).unwrap_or_default();
    MigrationKeyToken::from_str(text.trim()).map_err(|_| Error::Config {
        reason: "InvalidKeySecret",
        message: "the key Secret does not hold a well-formed migration key".into(),
    })
}

async fn create_secret(
    secrets: &Api<Secret>,
    key: &MigrationKey,
    database_uid: &str,
) -> Result<MigrationKeyToken, Error> {
    let token = MigrationKeyToken::generate().map_err(|e| Error::Key(e.to_string()))?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(key)),
            namespace: key.namespace(),
            owner_references: key.controller_owner_ref(&()).map(|o| vec![o]),
            labels: Some(names::key_secret_labels(
                &key.spec.database_ref,
                database_uid,
                token.key_id(),
            )),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            [(
                SECRET_KEY_FIELD.to_owned(),
                ByteString(token.expose().into_bytes()),
            )]
            .into_iter()
            .collect(),
        ),
        ..Default::default()
    };
    match secrets
        .create(
            &PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &secret,
        )
        .await
    {
        Ok(_) => Ok(token),
        // Another pass won the race: use what it wrote.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            read_owned_token(&secrets.get(&secret_name(key)).await?, key)
        }
        Err(error) => Err(error.into()),
    }
}

async fn patch_key_status(
    api: &Api<MigrationKey>,
    key: &MigrationKey,
    status: MigrationKeyStatus,
) -> Result<(), Error> {
    apply_status(api, &key.name_any(), FIELD_MANAGER, &status).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(seconds).unwrap()
    }

    fn key(name: &str, created: i64, expires: i64, revoked: bool) -> KeyFacts {
        KeyFacts {
            name: name.into(),
            created: at(created),
            expires: at(expires),
            revoked,
            expired_by_switch: false,
        }
    }

    #[test]
    fn the_newest_valid_key_is_active_and_older_ones_are_superseded() {
        let keys = [key("a", 10, 1000, false), key("b", 20, 1000, false)];
        let phases = key_phases(&keys, false, at(100));
        assert_eq!(
            phases,
            vec![
                ("a".into(), KeyPhase::Superseded),
                ("b".into(), KeyPhase::Active)
            ]
        );
    }

    #[test]
    fn revoking_or_expiring_the_newest_does_not_revive_an_older_key_wrongly() {
        let keys = [key("a", 10, 1000, false), key("b", 20, 1000, true)];
        let phases = key_phases(&keys, false, at(100));
        assert_eq!(
            phases,
            vec![
                ("a".into(), KeyPhase::Active),
                ("b".into(), KeyPhase::Revoked)
            ]
        );
        let keys = [key("a", 10, 50, false), key("b", 20, 1000, false)];
        assert_eq!(key_phases(&keys, false, at(100))[0].1, KeyPhase::Expired);
    }

    #[test]
    fn every_key_expires_when_the_database_is_operational() {
        let keys = [key("a", 10, 1000, false), key("b", 20, 1000, false)];
        assert!(
            key_phases(&keys, true, at(100))
                .iter()
                .all(|(_, p)| *p == KeyPhase::Expired)
        );
    }

    #[test]
    fn a_key_the_switch_expired_stays_expired_while_the_database_is_activating() {
        // The switch expired both keys; the database is not Operational yet. Neither comes back,
        // and the older one is not promoted in place of the newer.
        let mut a = key("a", 10, 1000, false);
        let mut b = key("b", 20, 1000, false);
        a.expired_by_switch = true;
        b.expired_by_switch = true;
        assert!(
            key_phases(&[a.clone(), b], false, at(100))
                .iter()
                .all(|(_, p)| *p == KeyPhase::Expired)
        );
        let b = key("b", 20, 1000, false);
        assert_eq!(
            key_phases(&[a, b], false, at(100)),
            vec![
                ("a".into(), KeyPhase::Expired),
                ("b".into(), KeyPhase::Active)
            ],
            "a key not yet expired keeps its phase until the switch expires it"
        );
    }
}
