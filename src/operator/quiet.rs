//! Which wake-ups of a MigrationDatabase need a full pass (PostgreSQL sessions) and which only
//! status writes caused: remembered per database, with the fingerprint of what a pass depends on.

use std::time::{Duration, Instant};

use kube::ResourceExt;

use super::Context;
use crate::crd::MigrationDatabase;

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

impl QuietPasses {
    /// How long until the next full pass is due, if this wake-up needs none.
    pub(super) fn remaining(
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

    pub(super) fn record(&self, uid: &str, fingerprint: u64, resource_version: Option<&str>) {
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

    pub(super) fn forget(&self, uid: &str) {
        let mut passes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        passes.remove(uid);
    }
}

pub(super) struct QuietPass {
    fingerprint: u64,
    at: Instant,
    resource_version: Option<String>,
}

/// What a pass depends on, hashed: the spec (generation), deletion, labels and annotations, what the
/// migration API reports that leads to the switch (validated digest, activation request), and the
/// database's MigrationKeys as the key cache holds them. Not the progress counters, and not the
/// status the operator writes itself.
pub fn pass_fingerprint(db: &MigrationDatabase, ctx: &Context) -> u64 {
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
