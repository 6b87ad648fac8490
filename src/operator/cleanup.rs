//! Deletion of a MigrationDatabase, by its reclaim policy: `Delete` drops the database and roles,
//! `Retain` keeps them with the migrator locked and the application Secret orphaned. The
//! migrator's Secret goes either way. The phase is `Deleting` from the first step.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::credentials::{admin_uri, delete_owned_secret};
use super::status::{StatusParts, cond, patch_status, publish};
use super::{Context, Error};
use crate::crd::{ConditionType, MigrationDatabase, Phase, ReclaimPolicy};
use crate::names::{self, ChildNames};
use crate::postgres::provision::AdminSession;

/// Deletion: `Delete` drops the database and roles; `Retain` keeps them, locks the migrator and
/// orphans the credential Secrets so garbage collection does not take them. The migrator's Secret
/// in the migration API's namespace goes either way.
pub(super) async fn cleanup(
    db: Arc<MigrationDatabase>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let (db, ctx) = (db.as_ref(), ctx.as_ref());
    let namespace = db.namespace().unwrap_or_default();
    let uid = db.uid().unwrap_or_default();
    let child = ChildNames::of(db);
    let names = child.database.clone();
    let api_secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.config.api_namespace);
    let local_secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let app_name = child.application_secret.clone();
    // First of all the phase: the migration API refuses every write to a database being deleted.
    if db.status.as_ref().and_then(|s| s.phase) != Some(Phase::Deleting) {
        patch_status(
            ctx,
            db,
            Phase::Deleting,
            "Deleting",
            vec![cond(
                ConditionType::Ready,
                false,
                "Deleting",
                "the MigrationDatabase is being deleted; its reclaim policy is applied",
            )],
            StatusParts::default(),
        )
        .await?;
    }
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
