//! The one way status is written: a server-side apply of a typed status under the writer's field
//! manager (the operator's, or the migration API's for `status.migration` alone). Fields the writer
//! owned and leaves out are removed by the API server, so a writer always sends the whole of its
//! part of the status.

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::Serialize;

/// Applies `status` as the status of the object `name` of kind `K`, forcing ownership of the
/// fields it holds to `manager`.
pub async fn apply_status<K, S>(
    api: &Api<K>,
    name: &str,
    manager: &str,
    status: &S,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Serialize + std::fmt::Debug,
{
    #[derive(Serialize, Debug)]
    #[serde(rename_all = "camelCase")]
    struct StatusApply<'a, S> {
        api_version: &'a str,
        kind: &'a str,
        status: &'a S,
    }
    let patch = StatusApply {
        api_version: &K::api_version(&()),
        kind: &K::kind(&()),
        status,
    };
    api.patch_status(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}
