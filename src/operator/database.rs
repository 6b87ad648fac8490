//! Reconciling one MigrationDatabase: provision (staging), observe the migration, switch to
//! operational under the activation rule, and clean up on deletion according to the reclaim policy.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Resource, ResourceExt};

use super::activation::{ActivationDecision, activation_decision};
use super::children::{self, Credentials, Expected};
use super::cleanup::cleanup;
use super::credentials::{
    admin_uri, delete_owned_secret, ensure_password, legacy_migrator_password, owned_password,
};
use super::quiet::{fingerprint_text, pass_fingerprint};
use super::status::{StatusParts, cond, patch_status, publish};
use super::{Context, Error, FIELD_MANAGER, FINALIZER};
use crate::crd::conditions::ConditionType;
use crate::crd::{DatabaseCoordinates, LastPass, MigrationDatabase, Phase, apply_status};
use crate::names::{self, ChildNames};
use crate::postgres::provision::{AdminSession, Mode};
use crate::postgres::schema::data_model_versions;
use crate::postgres::scram::generate_password;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

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
    // The fingerprint covers the database's keys: not before the key cache holds them all.
    wait_for_keys(ctx).await?;
    let fingerprint = pass_fingerprint(db, ctx);
    let version = db.metadata.resource_version.as_deref();
    if let Some(wait) = ctx
        .quiet
        .remaining(&uid, fingerprint, version, ctx.config.resync)
        .or_else(|| restored(db, ctx, fingerprint))
    {
        return Ok(Action::requeue(wait));
    }
    let mut reached = current_phase(db);
    match provision_and_observe(db, ctx, &mut reached, fingerprint).await {
        Ok(action) => {
            ctx.quiet.record(&uid, fingerprint, version);
            Ok(action)
        }
        Err(error) => {
            ctx.quiet.failed(&uid);
            let message = error.to_string();
            let reason = failure_reason(&error, reached);
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
                StatusParts::default(),
            )
            .await?;
            Err(error)
        }
    }
}

/// After a restart: the wait until the resync when the status records a successful pass with this
/// fingerprint that this process has not seen (see [`super::quiet::QuietPasses::restore`]).
fn restored(
    db: &MigrationDatabase,
    ctx: &Context,
    fingerprint: u64,
) -> Option<std::time::Duration> {
    let last = db.status.as_ref()?.last_pass.as_ref()?;
    if last.digest != fingerprint_text(fingerprint) {
        return None;
    }
    let ago = jiff::Timestamp::now().duration_since(last.at.0);
    let ago = std::time::Duration::try_from(ago).ok()?;
    ctx.quiet.restore(
        &db.uid().unwrap_or_default(),
        fingerprint,
        db.metadata.resource_version.as_deref(),
        ago,
        ctx.config.resync,
    )
}

/// The reason a failed pass reports: the error's, except that a database already provisioned (in
/// staging or later) did not fail its provisioning: what failed is the pass (`ReconcileFailed`).
pub fn failure_reason(error: &Error, reached: Option<Phase>) -> &'static str {
    let reason = error.reason();
    let provisioned = matches!(
        reached,
        Some(
            Phase::Staging
                | Phase::Migrating
                | Phase::Validated
                | Phase::Activating
                | Phase::Operational
        )
    );
    if provisioned && reason == "ProvisioningFailed" {
        "ReconcileFailed"
    } else {
        reason
    }
}

fn current_phase(db: &MigrationDatabase) -> Option<Phase> {
    db.status.as_ref().and_then(|s| s.phase)
}

/// One pass. `reached` follows the phase of the switch this pass has written (`Activating`), for the
/// failure path of [`apply`].
async fn provision_and_observe(
    db: &MigrationDatabase,
    ctx: &Context,
    reached: &mut Option<Phase>,
    fingerprint: u64,
) -> Result<Action, Error> {
    let done = || LastPass {
        digest: fingerprint_text(fingerprint),
        at: Time(jiff::Timestamp::now()),
    };
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
    // Taken before this pass writes `Provisioning`, which is what makes it sound: no child is made
    // before that write (see `children::expected`).
    let expected = children::expected(db);
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
            StatusParts::default(),
        )
        .await?;
    }

    let mut session = AdminSession::open(&admin, names.clone(), &uid).await?;
    let (host, port) = session.server();
    let ssl_mode = session.ssl_mode();
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
            ssl_mode,
        },
    );
    let application_password =
        ensure_password(&local_secrets, &app_name, &uid, secret, candidate, expected).await?;

    let migrator_secret = |password: &str| {
        children::credentials_secret(
            &migrator_name,
            &ctx.config.api_namespace,
            names::database_labels(db, names::COMPONENT_MIGRATOR_CREDENTIALS),
            vec![],
            &Credentials {
                username: &names.migrator,
                password,
                host: &host,
                port,
                database: &names.database,
                ssl_mode,
            },
        )
    };
    let (mode_before, _) = session.observe().await.unwrap_or((None, None));
    let migrator_password = if mode_before == Some(Mode::Operational) {
        // The migrator is closed for good; its Secret is gone and must not come back.
        generate_password()
    } else if expected == Expected::Absent {
        // Never provisioned, by this release or an earlier one: no Secret of the old name to take
        // over or delete. One create; a Secret met under the name is read and checked instead.
        let candidate = generate_password();
        let secret = migrator_secret(&candidate);
        ensure_password(
            &api_secrets,
            &migrator_name,
            &uid,
            secret,
            candidate,
            expected,
        )
        .await?
    } else if let Some(secret) = api_secrets.get_opt(&migrator_name).await? {
        // The usual pass: one read. A Secret of the old name is only looked for (and its
        // password taken over) when the new one is missing, and is deleted at the switch anyway.
        owned_password(&secret, &migrator_name, &uid)?
    } else {
        let candidate = match legacy_migrator_password(&api_secrets, &child, &uid).await? {
            Some(password) => password,
            None => generate_password(),
        };
        let secret = migrator_secret(&candidate);
        // Just read as missing: created first.
        let password = ensure_password(
            &api_secrets,
            &migrator_name,
            &uid,
            secret,
            candidate,
            Expected::Absent,
        )
        .await?;
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
            expected,
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
            expected,
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
            StatusParts {
                coordinates: Some(coordinates),
                // Every key of the database was just expired: none is active (read from the cache,
                // the patches above might not show yet).
                active_key: None,
                last_pass: Some(done()),
            },
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
        StatusParts {
            coordinates: Some(coordinates),
            active_key: active_key(db, ctx).await?,
            last_pass: Some(done()),
        },
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
        StatusParts::default(),
    )
    .await?;
    *reached = Some(Phase::Activating);
    Ok(())
}

/// Waits, once after a start, until the key controller's cache holds the first full list.
async fn wait_for_keys(ctx: &Context) -> Result<(), Error> {
    ctx.keys_ready
        .clone()
        .wait_for(|listed| *listed)
        .await
        .map(|_| ())
        .map_err(|_| Error::Config {
            reason: "KeyCacheUnavailable",
            message: "the operator's cache of MigrationKeys stopped before it was filled".into(),
        })
}

/// The keys of this database, from the key controller's cache.
async fn keys_of(
    db: &MigrationDatabase,
    ctx: &Context,
) -> Result<Vec<Arc<crate::crd::MigrationKey>>, Error> {
    wait_for_keys(ctx).await?;
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
            apply_status(&keys, &key.name_any(), FIELD_MANAGER, &status).await?;
        }
    }
    Ok(())
}

/// Server-side applies a child of the database with this UID, unless an object of its name exists
/// that was not made for it (a name collision: left unchanged). The read before the apply is what
/// keeps the apply off such an object, so a child [`Expected::Absent`] is created instead (one call)
/// and read, checked and applied only when the create meets an object of its name. A create records
/// the operator's field manager with the operation `Update`; later passes apply with force under
/// the same manager, which takes over every field whose value they change (the egress rules at the
/// switch). A field a later release stops setting would stay with that `Update` entry.
async fn apply_child<K>(
    api: &Api<K>,
    object: &K,
    uid: &str,
    expected: Expected,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    if expected == Expected::Absent {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.create(&params, object).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(error.into()),
        }
    }
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
