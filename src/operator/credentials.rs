//! The credentials a database's pass reads and writes in Kubernetes: the admin URI (from the
//! database's Secret or the operator's default server) and the role passwords in their Secrets,
//! each reused only when its Secret carries this database's UID label.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};

use super::children::Expected;
use super::{Context, Error, FIELD_MANAGER};
use crate::crd::MigrationDatabase;
use crate::names::{self, ChildNames};

pub(super) async fn admin_uri(db: &MigrationDatabase, ctx: &Context) -> Result<String, Error> {
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
/// name collision: neither read nor changed. `expected` picks the first call (see [`Expected`]):
/// a Secret expected absent costs one create, one expected present one read.
pub(super) async fn ensure_password(
    api: &Api<Secret>,
    name: &str,
    uid: &str,
    candidate: Secret,
    candidate_password: String,
    expected: Expected,
) -> Result<String, Error> {
    if expected == Expected::Present
        && let Some(secret) = api.get_opt(name).await?
    {
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
pub(super) fn owned_password(secret: &Secret, name: &str, uid: &str) -> Result<String, Error> {
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
pub(super) async fn legacy_migrator_password(
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
pub(super) async fn delete_owned_secret(
    api: &Api<Secret>,
    name: &str,
    uid: &str,
) -> Result<(), Error> {
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
