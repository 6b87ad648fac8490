//! Reconciling one MigrationDatabase: provision (staging), observe the migration, switch to
//! operational under the activation rule, and clean up on deletion according to the reclaim policy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::children::{self, Credentials};
use super::{Context, Error, FIELD_MANAGER, FINALIZER};
use crate::crd::conditions::{ConditionType, set_condition};
use crate::crd::{ActivationMode, DatabaseCoordinates, MigrationDatabase, Phase, ReclaimPolicy};
use crate::names::{self, ChildNames};
use crate::postgres::provision::{AdminSession, Mode, ValidationRecord};
use crate::postgres::schema::data_model_versions;
use crate::postgres::scram::generate_password;

/// What the activation rule decides for a database in staging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActivationDecision {
    /// No validation record in PostgreSQL yet.
    NotValidated,
    /// The status claims a digest that the record in PostgreSQL does not hold.
    DigestMismatch,
    /// Validated; waiting for the client's activation request.
    AwaitingRequest,
    /// Manual activation: waiting for `spec.activation.approvedDigest` to equal the validated digest.
    AwaitingApproval,
    /// Every condition holds: switch.
    Switch,
}

/// DESIGN section 3, "Activation, defined once": (1) a validation record exists in the database,
/// (2) `status.migration.validatedDigest` equals its digest, (3) activation was requested, (4) the
/// mode is Automatic, or Manual with an approval of exactly that digest.
pub fn activation_decision(
    db: &MigrationDatabase,
    record: Option<&ValidationRecord>,
) -> ActivationDecision {
    let Some(record) = record else {
        return ActivationDecision::NotValidated;
    };
    let claimed = db
        .status
        .as_ref()
        .and_then(|s| s.migration.as_ref())
        .and_then(|m| m.validated_digest.as_deref());
    if claimed != Some(record.manifest_digest.as_str()) {
        return ActivationDecision::DigestMismatch;
    }
    if !record.activation_requested {
        return ActivationDecision::AwaitingRequest;
    }
    match db.spec.activation.mode {
        ActivationMode::Automatic => ActivationDecision::Switch,
        ActivationMode::Manual
            if db.spec.activation.approved_digest.as_deref()
                == Some(record.manifest_digest.as_str()) =>
        {
            ActivationDecision::Switch
        }
        ActivationMode::Manual => ActivationDecision::AwaitingApproval,
    }
}

pub async fn reconcile(
    db: Arc<MigrationDatabase>,
    ctx: Arc<Context>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    let api: Api<MigrationDatabase> =
        Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, db, |event| async move {
        match event {
            // Boxed as `Send` futures here: without it the compiler cannot prove the nested futures
            // Send for every lifetime (a known limitation with higher-ranked closures).
            Finalizer::Apply(db) => {
                let work: futures::future::BoxFuture<'static, Result<Action, Error>> =
                    Box::pin(apply(db, ctx));
                work.await
            }
            Finalizer::Cleanup(db) => {
                let work: futures::future::BoxFuture<'static, Result<Action, Error>> =
                    Box::pin(cleanup(db, ctx));
                work.await
            }
        }
    })
    .await
}

/// Failures with a cause the user must fix are written to status and an Event, then retried with
/// backoff by returning the error. The phase written with the failure is the one the object has by
/// then: a failure after this pass wrote `Activating` keeps `Activating`, so the migration API never
/// sees a staging phase for a database whose migrator may be closed.
async fn apply(db: Arc<MigrationDatabase>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (db, ctx) = (db.as_ref(), ctx.as_ref());
    let uid = db.uid().unwrap_or_default();
    let fingerprint = pass_fingerprint(db, ctx);
    let version = db.metadata.resource_version.as_deref();
    if let Some(wait) = ctx
        .quiet
        .remaining(&uid, fingerprint, version, ctx.config.resync)
    {
        return Ok(Action::requeue(wait));
    }
    let mut reached = current_phase(db);
    match provision_and_observe(db, ctx, &mut reached).await {
        Ok(action) => {
            ctx.quiet.record(&uid, fingerprint, version);
            Ok(action)
        }
        Err(error) => {
            ctx.quiet.forget(&uid);
            let message = error.to_string();
            let reason = error.reason();
            publish(ctx, db, EventType::Warning, reason, &message).await;
            let phase = match &error {
                Error::Provision(crate::postgres::provision::ProvisionError::NameCollision {
                    ..
                })
                | Error::NameCollision { .. } => Phase::Failed,
                Error::Config {
                    reason: "UnknownDataModelVersion",
                    ..
                } => Phase::Failed,
                _ => reached.unwrap_or(Phase::Pending),
            };
            patch_status(
                ctx,
                db,
                phase,
                reason,
                vec![cond(ConditionType::Ready, false, reason, &message)],
                None,
                None,
            )
            .await?;
            Err(error)
        }
    }
}

/// Databases whose last pass succeeded: what each looked like then ([`pass_fingerprint`]), when,
/// and the `resourceVersion` last seen.
///
/// Every status write wakes a MigrationDatabase, and the migration API writes `status.migration`
/// about once a second while it receives files. A full pass (two PostgreSQL sessions, about twenty
/// idempotent statements) for each of those writes cost PostgreSQL more CPU than the ingest itself in
/// a long migration. So a wake-up by a new version of the object that a pass would see the same
/// (only status changed: the API's progress, or this operator's own status write) is answered
/// without touching PostgreSQL until the resync is due. A wake-up with the version already seen came
/// from elsewhere (an owned Secret changed or was deleted, the resync timer): that gets a full pass.
#[derive(Default)]
pub struct QuietPasses(std::sync::Mutex<std::collections::HashMap<String, QuietPass>>);

struct QuietPass {
    fingerprint: u64,
    at: Instant,
    resource_version: Option<String>,
}

impl QuietPasses {
    /// How long until the next full pass is due, if this wake-up needs none.
    fn remaining(
        &self,
        uid: &str,
        fingerprint: u64,
        resource_version: Option<&str>,
        resync: Duration,
    ) -> Option<Duration> {
        let mut passes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let pass = passes.get_mut(uid)?;
        let elapsed = pass.at.elapsed();
        let quiet = pass.fingerprint == fingerprint
            && pass.resource_version.as_deref() != resource_version
            && elapsed + Duration::from_secs(1) < resync;
        if !quiet {
            return None;
        }
        pass.resource_version = resource_version.map(str::to_owned);
        Some(resync - elapsed)
    }

    fn record(&self, uid: &str, fingerprint: u64, resource_version: Option<&str>) {
        let mut passes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        passes.insert(
            uid.to_owned(),
            QuietPass {
                fingerprint,
                at: Instant::now(),
                resource_version: resource_version.map(str::to_owned),
            },
        );
    }

    fn forget(&self, uid: &str) {
        let mut passes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        passes.remove(uid);
    }
}

/// What a pass depends on, hashed: the spec (generation), deletion, labels and annotations, what the
/// migration API reports that leads to the switch (validated digest, activation request), and the
/// database's MigrationKeys as the key cache holds them. Not the progress counters, and not the
/// status the operator writes itself.
fn pass_fingerprint(db: &MigrationDatabase, ctx: &Context) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let meta = &db.metadata;
    meta.uid.hash(&mut hasher);
    meta.generation.hash(&mut hasher);
    meta.deletion_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .hash(&mut hasher);
    meta.finalizers.hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    let migration = db.status.as_ref().and_then(|s| s.migration.as_ref());
    migration
        .and_then(|m| m.validated_digest.as_ref())
        .hash(&mut hasher);
    migration
        .and_then(|m| m.activation_requested_at.as_ref())
        .hash(&mut hasher);
    let (namespace, name) = (db.namespace(), db.name_any());
    let mut keys: Vec<(String, Option<String>)> = ctx
        .keys
        .state()
        .iter()
        .filter(|key| key.namespace() == namespace && key.spec.database_ref == name)
        .map(|key| (key.name_any(), key.resource_version()))
        .collect();
    keys.sort();
    keys.hash(&mut hasher);
    hasher.finish()
}

fn current_phase(db: &MigrationDatabase) -> Option<Phase> {
    db.status.as_ref().and_then(|s| s.phase)
}

async fn admin_uri(db: &MigrationDatabase, ctx: &Context) -> Result<String, Error> {
    match &db.spec.server {
        Some(server) => {
            let secrets: Api<Secret> =
                Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
            let reference = &server.admin_secret_ref;
            let secret = secrets
                .get_opt(&reference.name)
                .await?
                .ok_or_else(|| Error::Config {
                    reason: "AdminSecretMissing",
                    message: format!(
                        "the admin Secret {} does not exist in this namespace",
                        reference.name
                    ),
                })?;
            names::secret_field(&secret, &reference.key).ok_or_else(|| Error::Config {
                reason: "InvalidAdminSecret",
                message: format!(
                    "the admin Secret {} has no key {}",
                    reference.name, reference.key
                ),
            })
        }
        None => ctx
            .config
            .default_admin_uri
            .clone()
            .ok_or_else(|| Error::Config {
                reason: "AdminSecretMissing",
                message: "spec.server is empty and the operator has no default PostgreSQL server"
                    .into(),
            }),
    }
}

/// Reads the password of this database's Secret `name`, creating the Secret first (as `candidate`,
/// holding `candidate_password`) when it does not exist. The password is written to Kubernetes
/// before it reaches PostgreSQL, so a crash in between loses nothing: the next pass sets the same
/// password again. A Secret of that name that was not made for this database (its UID label) is a
/// name collision: neither read nor changed.
async fn ensure_password(
    api: &Api<Secret>,
    name: &str,
    uid: &str,
    candidate: Secret,
    candidate_password: String,
) -> Result<String, Error> {
    if let Some(secret) = api.get_opt(name).await? {
        return owned_password(&secret, name, uid);
    }
    match api
        .create(
            &PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &candidate,
        )
        .await
    {
        Ok(_) => Ok(candidate_password),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            owned_password(&api.get(name).await?, name, uid)
        }
        Err(error) => Err(error.into()),
    }
}

/// The password of a Secret made for the database with this UID.
fn owned_password(secret: &Secret, name: &str, uid: &str) -> Result<String, Error> {
    if !names::owned_by(&secret.metadata, uid) {
        return Err(Error::NameCollision {
            kind: "Secret".to_owned(),
            name: name.to_owned(),
        });
    }
    names::secret_field(secret, names::SECRET_FIELD_PASSWORD).ok_or_else(|| Error::Config {
        reason: "InvalidSecret",
        message: format!("the Secret {name} exists without a password"),
    })
}

/// The migrator's password as releases before the UID-named Secret kept it: from the Secret under
/// its old name, when that Secret was made for this database. Moving it keeps the role's password
/// (and the migration API's open pool) unchanged across the upgrade.
async fn legacy_migrator_password(
    api_secrets: &Api<Secret>,
    child: &ChildNames,
    uid: &str,
) -> Result<Option<String>, Error> {
    Ok(api_secrets
        .get_opt(&child.legacy_migrator_secret)
        .await?
        .filter(|secret| names::owned_by(&secret.metadata, uid))
        .and_then(|secret| names::secret_field(&secret, names::SECRET_FIELD_PASSWORD)))
}

/// Deletes this database's Secret `name` if it exists and was made for this database; a Secret of
/// that name made for another is left alone.
async fn delete_owned_secret(api: &Api<Secret>, name: &str, uid: &str) -> Result<(), Error> {
    if let Some(secret) = api.get_opt(name).await?
        && names::owned_by(&secret.metadata, uid)
    {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// One pass. `reached` follows the phase of the switch this pass has written (`Activating`), for the
/// failure path of [`apply`].
async fn provision_and_observe(
    db: &MigrationDatabase,
    ctx: &Context,
    reached: &mut Option<Phase>,
) -> Result<Action, Error> {
    let namespace = db.namespace().unwrap_or_default();
    let uid = db.uid().unwrap_or_default();
    let version = db.spec.data_model_version;
    if !data_model_versions().contains(&version) {
        return Err(Error::Config {
            reason: "UnknownDataModelVersion",
            message: format!(
                "data model version {version} does not exist; this operator knows {:?}",
                data_model_versions()
            ),
        });
    }
    let admin = admin_uri(db, ctx).await?;
    let child = ChildNames::of(db);
    let names = child.database.clone();
    if current_phase(db).is_none() || current_phase(db) == Some(Phase::Pending) {
        patch_status(
            ctx,
            db,
            Phase::Provisioning,
            "Provisioning",
            vec![cond(
                ConditionType::Ready,
                false,
                "Provisioning",
                "creating the database and its roles",
            )],
            None,
            None,
        )
        .await?;
    }

    let mut session = AdminSession::open(&admin, names.clone(), &uid).await?;
    let (host, port) = session.server();
    let local_secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let api_secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.config.api_namespace);
    let app_name = child.application_secret.clone();
    let migrator_name = child.migrator_secret.clone();

    let candidate = generate_password();
    let secret = children::credentials_secret(
        &app_name,
        &namespace,
        names::database_labels(db, names::COMPONENT_APPLICATION_CREDENTIALS),
        children::owner(db),
        &Credentials {
            username: &names.application,
            password: &candidate,
            host: &host,
            port,
            database: &names.database,
        },
    );
    let application_password =
        ensure_password(&local_secrets, &app_name, &uid, secret, candidate).await?;

    let (mode_before, _) = session.observe().await.unwrap_or((None, None));
    let migrator_password = if mode_before == Some(Mode::Operational) {
        // The migrator is closed for good; its Secret is gone and must not come back.
        generate_password()
    } else {
        let candidate = match legacy_migrator_password(&api_secrets, &child, &uid).await? {
            Some(password) => password,
            None => generate_password(),
        };
        let secret = children::credentials_secret(
            &migrator_name,
            &ctx.config.api_namespace,
            names::database_labels(db, names::COMPONENT_MIGRATOR_CREDENTIALS),
            vec![],
            &Credentials {
                username: &names.migrator,
                password: &candidate,
                host: &host,
                port,
                database: &names.database,
            },
        );
        let password =
            ensure_password(&api_secrets, &migrator_name, &uid, secret, candidate).await?;
        delete_owned_secret(&api_secrets, &child.legacy_migrator_secret, &uid).await?;
        password
    };

    let mut mode = session
        .ensure_staging(version, &migrator_password, &application_password)
        .await?;
    let (_, record) = session.observe().await?;

    let decision = activation_decision(db, record.as_ref());
    // The switch, in the order the migration API relies on (it answers `status` and `key-check` from
    // the MigrationDatabase's status and refuses every write from `Activating` on): (1) phase
    // `Activating`, before anything is closed; (2) PostgreSQL switched, the mode written first as the
    // intent (`switch_to_operational`); (3) below, the access entry and the migrator's Secret; (4) the
    // keys expire; (5) phase `Operational`. A crash or failure anywhere leaves a phase at or after
    // `Activating` once (1) is done, and the next pass repeats every step (each is idempotent).
    if mode == Mode::Staging && decision == ActivationDecision::Switch {
        mark_activating(ctx, db, reached).await?;
        session.switch_to_operational().await?;
        mode = Mode::Operational;
        publish(
            ctx,
            db,
            EventType::Normal,
            "Operational",
            "switched to operational mode: the migrator is closed and the application role is open",
        )
        .await;
    } else if mode == Mode::Operational {
        // Finishes a switch that a crash interrupted after the mode was recorded (idempotent). The
        // phase is `Activating` already, unless something wrote an earlier one since: restore it.
        if !matches!(*reached, Some(Phase::Activating | Phase::Operational)) {
            mark_activating(ctx, db, reached).await?;
        }
        session.switch_to_operational().await?;
    }
    session.close().await?;

    if db.spec.network_policy.enabled {
        apply_child(
            &Api::<NetworkPolicy>::namespaced(ctx.client.clone(), &namespace),
            &children::network_policy(db, mode == Mode::Operational),
            &uid,
        )
        .await?;
    }

    let coordinates = DatabaseCoordinates {
        host: host.clone(),
        port: port.into(),
        name: names.database.clone(),
        data_model_version: version,
        application_secret: (mode == Mode::Operational).then(|| app_name.clone()),
        migrator_secret: (mode == Mode::Staging)
            .then(|| format!("{}/{}", ctx.config.api_namespace, migrator_name)),
    };

    if mode == Mode::Operational {
        apply_child(
            &Api::<ConfigMap>::namespaced(ctx.client.clone(), &namespace),
            &children::access_entry(db, &names.database),
            &uid,
        )
        .await?;
        delete_owned_secret(&api_secrets, &migrator_name, &uid).await?;
        delete_owned_secret(&api_secrets, &child.legacy_migrator_secret, &uid).await?;
        expire_keys(db, ctx).await?;
        let digest = record
            .as_ref()
            .map(|r| r.manifest_digest.as_str())
            .unwrap_or("");
        patch_status(
            ctx,
            db,
            Phase::Operational,
            "Operational",
            vec![
                cond(
                    ConditionType::Ready,
                    true,
                    "Operational",
                    "the database is in operational mode",
                ),
                cond(
                    ConditionType::Validated,
                    true,
                    "Validated",
                    &format!("validated manifest {digest}"),
                ),
                cond(
                    ConditionType::Operational,
                    true,
                    "Switched",
                    "the organisation's HelseID client has access",
                ),
            ],
            Some(coordinates),
            // Every key of the database was just expired: none is active (read from the cache,
            // the patches above might not show yet).
            None,
        )
        .await?;
        return Ok(Action::requeue(ctx.config.resync));
    }

    let (phase, reason, validated, message) = match decision {
        ActivationDecision::NotValidated => {
            let migrating = db
                .status
                .as_ref()
                .and_then(|s| s.migration.as_ref())
                .is_some_and(|m| m.organisation_stored || m.patients.received > 0);
            let phase = if migrating {
                Phase::Migrating
            } else {
                Phase::Staging
            };
            (
                phase,
                if migrating { "Migrating" } else { "Staging" },
                false,
                "no validation record yet",
            )
        }
        ActivationDecision::DigestMismatch => (
            Phase::Migrating,
            "ValidationDigestMismatch",
            false,
            "status.migration.validatedDigest does not match the validation record in the database",
        ),
        ActivationDecision::AwaitingRequest => (
            Phase::Validated,
            "AwaitingActivationRequest",
            true,
            "validated; waiting for the client to request activation",
        ),
        ActivationDecision::AwaitingApproval => (
            Phase::Validated,
            "AwaitingManualApproval",
            true,
            "validated; waiting for spec.activation.approvedDigest to equal the validated digest",
        ),
        ActivationDecision::Switch => unreachable!("handled above"),
    };
    let first_time = current_phase(db) != Some(phase);
    patch_status(
        ctx,
        db,
        phase,
        reason,
        vec![
            cond(
                ConditionType::Ready,
                true,
                "Staging",
                "provisioned in staging mode: only the migration API may write",
            ),
            cond(ConditionType::Validated, validated, reason, message),
            cond(
                ConditionType::Operational,
                false,
                reason,
                "not yet switched to operational mode",
            ),
        ],
        Some(coordinates),
        active_key(db, ctx).await?,
    )
    .await?;
    if first_time {
        publish(
            ctx,
            db,
            EventType::Normal,
            reason,
            &format!("phase {phase:?}"),
        )
        .await;
    }
    // The API's writes to `status.migration` (validated, activation requested) wake the object at
    // once; the resync only repairs drift, so it can be long: every pass costs the server a session.
    Ok(Action::requeue(ctx.config.resync))
}

/// Phase `Activating`: written before the migrator is closed, so that the migration API answers
/// from the status (and refuses writes) before a connection could fail.
async fn mark_activating(
    ctx: &Context,
    db: &MigrationDatabase,
    reached: &mut Option<Phase>,
) -> Result<(), Error> {
    patch_status(
        ctx,
        db,
        Phase::Activating,
        "Activating",
        vec![cond(
            ConditionType::Validated,
            true,
            "Validated",
            "the validation record is in the database",
        )],
        None,
        None,
    )
    .await?;
    *reached = Some(Phase::Activating);
    Ok(())
}

/// The keys of this database, from the key controller's cache (waiting, once after a start, until
/// it holds the first full list).
async fn keys_of(
    db: &MigrationDatabase,
    ctx: &Context,
) -> Result<Vec<Arc<crate::crd::MigrationKey>>, Error> {
    ctx.keys
        .wait_until_ready()
        .await
        .map_err(|_| Error::Config {
            reason: "KeyCacheUnavailable",
            message: "the operator's cache of MigrationKeys stopped before it was filled".into(),
        })?;
    let (namespace, name, uid) = (db.namespace(), db.name_any(), db.uid().unwrap_or_default());
    Ok(ctx
        .keys
        .state()
        .into_iter()
        .filter(|k| {
            k.namespace() == namespace
                && k.spec.database_ref == name
                && super::key::belongs_to(k, &uid)
        })
        .collect())
}

/// The id of the one Active MigrationKey of this database, if any.
async fn active_key(db: &MigrationDatabase, ctx: &Context) -> Result<Option<String>, Error> {
    Ok(keys_of(db, ctx)
        .await?
        .into_iter()
        .filter_map(|k| k.status.clone())
        .find(|s| s.phase == Some(crate::crd::KeyPhase::Active))
        .and_then(|s| s.key_id))
}

/// Every key of an operational database stops working at once (the API checks the phase too). The
/// keys come from the cache; each patch goes to the API server. A key the cache does not hold yet
/// is expired by the key controller once the database is `Operational`.
async fn expire_keys(db: &MigrationDatabase, ctx: &Context) -> Result<(), Error> {
    let keys: Api<crate::crd::MigrationKey> =
        Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    for key in keys_of(db, ctx).await? {
        let phase = key.status.as_ref().and_then(|s| s.phase);
        if matches!(
            phase,
            Some(crate::crd::KeyPhase::Active)
                | Some(crate::crd::KeyPhase::Superseded)
                | Some(crate::crd::KeyPhase::Pending)
        ) {
            let status = super::key::status_with(
                &key,
                crate::crd::KeyPhase::Expired,
                "the database is operational",
            );
            let patch = json!({"apiVersion": "sfm.nhn.no/v1alpha1", "kind": "MigrationKey", "status": status});
            keys.patch_status(
                &key.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        }
    }
    Ok(())
}

/// Server-side applies a child of the database with this UID, unless an object of its name exists
/// that was not made for it (a name collision: left unchanged).
async fn apply_child<K>(api: &Api<K>, object: &K, uid: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    if let Some(existing) = api.get_opt(&name).await?
        && !names::owned_by(existing.meta(), uid)
    {
        return Err(Error::NameCollision {
            kind: K::kind(&()).into_owned(),
            name,
        });
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await?;
    Ok(())
}

/// One condition to set: type, status, reason, message.
struct Cond(ConditionType, bool, String, String);

fn cond(type_: ConditionType, status: bool, reason: &str, message: &str) -> Cond {
    Cond(type_, status, reason.to_owned(), message.to_owned())
}

/// One server-side apply of the operator's status fields. Never includes `status.migration`.
async fn patch_status(
    ctx: &Context,
    db: &MigrationDatabase,
    phase: Phase,
    reason: &str,
    conditions: Vec<Cond>,
    coordinates: Option<DatabaseCoordinates>,
    active_key: Option<String>,
) -> Result<(), Error> {
    let now = jiff::Timestamp::now();
    let mut merged = db
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    for Cond(type_, status, reason, message) in conditions {
        set_condition(
            &mut merged,
            type_,
            status,
            &reason,
            &message,
            db.metadata.generation,
            now,
        );
    }
    let mut status = json!({
        "phase": phase,
        "phaseReason": reason,
        "conditions": merged,
        "observedGeneration": db.metadata.generation,
    });
    let previous = db.status.as_ref();
    if let Some(coordinates) = coordinates.or_else(|| previous.and_then(|s| s.database.clone())) {
        status["database"] = serde_json::to_value(coordinates).unwrap_or_default();
    }
    if let Some(key) = active_key {
        status["activeKey"] = json!(key);
    }
    let patch = json!({
        "apiVersion": "sfm.nhn.no/v1alpha1",
        "kind": "MigrationDatabase",
        "status": status,
    });
    let api: Api<MigrationDatabase> =
        Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    api.patch_status(
        &db.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    db: &MigrationDatabase,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &db.object_ref(&())).await {
        tracing::warn!(%error, "could not publish an Event");
    }
}

/// Deletion: `Delete` drops the database and roles; `Retain` keeps them, locks the migrator and
/// orphans the credential Secrets so garbage collection does not take them. The migrator's Secret
/// in the migration API's namespace goes either way.
async fn cleanup(db: Arc<MigrationDatabase>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (db, ctx) = (db.as_ref(), ctx.as_ref());
    let namespace = db.namespace().unwrap_or_default();
    let uid = db.uid().unwrap_or_default();
    let child = ChildNames::of(db);
    let names = child.database.clone();
    let api_secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.config.api_namespace);
    let local_secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let app_name = child.application_secret.clone();
    match admin_uri(db, ctx).await {
        Ok(admin) => {
            let mut session = AdminSession::open(&admin, names, &uid).await?;
            match db.spec.reclaim_policy {
                ReclaimPolicy::Delete => session.drop_everything().await?,
                ReclaimPolicy::Retain => session.lock_migrator().await?,
            }
            session.close().await?;
        }
        Err(error) if db.spec.reclaim_policy == ReclaimPolicy::Retain => {
            // Nothing to drop; the data stays where it is. Say so, and let the object go.
            publish(
                ctx,
                db,
                EventType::Warning,
                error.reason(),
                "could not lock the migrator on deletion",
            )
            .await;
        }
        Err(error) => return Err(error),
    }
    delete_owned_secret(&api_secrets, &child.migrator_secret, &uid).await?;
    delete_owned_secret(&api_secrets, &child.legacy_migrator_secret, &uid).await?;
    if db.spec.reclaim_policy == ReclaimPolicy::Retain
        && local_secrets
            .get_opt(&app_name)
            .await?
            .is_some_and(|secret| names::owned_by(&secret.metadata, &uid))
    {
        let orphan = json!({"metadata": {"ownerReferences": null}});
        local_secrets
            .patch(&app_name, &PatchParams::default(), &Patch::Merge(&orphan))
            .await?;
    }
    publish(
        ctx,
        db,
        EventType::Normal,
        "Deleted",
        &format!("reclaim policy {:?} applied", db.spec.reclaim_policy),
    )
    .await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::QuietPasses;
    use std::time::Duration;

    #[test]
    fn a_status_only_change_waits_for_the_resync_and_anything_else_gets_a_full_pass() {
        let quiet = QuietPasses::default();
        let resync = Duration::from_secs(300);
        assert_eq!(
            quiet.remaining("uid", 1, Some("1"), resync),
            None,
            "never passed"
        );
        quiet.record("uid", 1, Some("1"));
        // The pass's own status write, then the API's progress: new versions, same fingerprint.
        for version in ["2", "3"] {
            assert!(
                quiet
                    .remaining("uid", 1, Some(version), resync)
                    .is_some_and(|wait| wait > Duration::from_secs(290)),
                "status only ({version}): the next full pass is at the resync"
            );
        }
        assert_eq!(
            quiet.remaining("uid", 1, Some("3"), resync),
            None,
            "the version already seen: woken by something else (an owned Secret, the timer)"
        );
        assert_eq!(
            quiet.remaining("uid", 2, Some("4"), resync),
            None,
            "changed"
        );
        assert_eq!(
            quiet.remaining("other", 1, Some("4"), resync),
            None,
            "another object"
        );
        assert_eq!(
            quiet.remaining("uid", 1, Some("5"), Duration::from_secs(1)),
            None,
            "the resync is due"
        );
        quiet.forget("uid");
        assert_eq!(
            quiet.remaining("uid", 1, Some("6"), resync),
            None,
            "failed since"
        );
    }
}
