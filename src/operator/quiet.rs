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
pub struct QuietPasses(std::sync::Mutex<std::collections::HashMap<String, Known>>);

/// What this process knows of a database's last pass.
enum Known {
    Passed(QuietPass),
    /// The last pass failed: the next wake-up gets a full pass, whatever the status says.
    Failed,
}

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
        let Some(Known::Passed(pass)) = passes.get_mut(uid) else {
            return None;
        };
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

    /// After a restart: a database this process has not passed yet, whose status records a
    /// successful pass `ago` with the same fingerprint, needs no pass until the resync is due. That
    /// pass is taken as this process's own (so a wake-up with this version is from elsewhere).
    pub(super) fn restore(
        &self,
        uid: &str,
        fingerprint: u64,
        resource_version: Option<&str>,
        ago: Duration,
        resync: Duration,
    ) -> Option<Duration> {
        let mut passes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if passes.contains_key(uid) || ago + Duration::from_secs(1) >= resync {
            return None;
        }
        let at = Instant::now().checked_sub(ago)?;
        passes.insert(
            uid.to_owned(),
            Known::Passed(QuietPass {
                fingerprint,
                at,
                resource_version: resource_version.map(str::to_owned),
            }),
        );
        Some(resync - ago)
    }

    pub(super) fn record(&self, uid: &str, fingerprint: u64, resource_version: Option<&str>) {
        let mut passes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        passes.insert(
            uid.to_owned(),
            Known::Passed(QuietPass {
                fingerprint,
                at: Instant::now(),
                resource_version: resource_version.map(str::to_owned),
            }),
        );
    }

    /// The pass failed: the next wake-up gets a full pass (a status that still shows an earlier
    /// success is not believed).
    pub(super) fn failed(&self, uid: &str) {
        let mut passes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        passes.insert(uid.to_owned(), Known::Failed);
    }
}

pub(super) struct QuietPass {
    fingerprint: u64,
    at: Instant,
    resource_version: Option<String>,
}

/// What a pass depends on, as a digest that is the same in every process and build of the same
/// release (it is kept in `status.lastPass` across restarts): the spec (generation), deletion,
/// labels and annotations, what the migration API reports that leads to the switch (validated
/// digest, activation request), the database's MigrationKeys as the key cache holds them, and the
/// operator's release and migrations (a new operator passes everything once). Not the progress
/// counters, and not the status the operator writes itself.
pub fn pass_fingerprint(db: &MigrationDatabase, ctx: &Context) -> u64 {
    let meta = &db.metadata;
    let migration = db.status.as_ref().and_then(|s| s.migration.as_ref());
    let (namespace, name) = (db.namespace(), db.name_any());
    let mut keys: Vec<(String, Option<String>)> = ctx
        .keys
        .state()
        .iter()
        .filter(|key| key.namespace() == namespace && key.spec.database_ref == name)
        .map(|key| (key.name_any(), key.resource_version()))
        .collect();
    keys.sort();
    let facts = serde_json::json!({
        "release": env!("CARGO_PKG_VERSION"),
        "migrations": crate::postgres::provision::template_tag(crate::postgres::latest_version()),
        "uid": meta.uid,
        "generation": meta.generation,
        "deletion": meta.deletion_timestamp,
        "finalizers": meta.finalizers,
        "labels": meta.labels,
        "annotations": meta.annotations,
        "validated": migration.and_then(|m| m.validated_digest.as_ref()),
        "activationRequested": migration.and_then(|m| m.activation_requested_at.as_ref()),
        "keys": keys,
    });
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, facts.to_string().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// The fingerprint as `status.lastPass.digest` spells it.
pub fn fingerprint_text(fingerprint: u64) -> String {
    format!("{fingerprint:016x}")
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
        quiet.failed("uid");
        assert_eq!(
            quiet.remaining("uid", 1, Some("6"), resync),
            None,
            "failed since"
        );
        assert_eq!(
            quiet.restore("uid", 1, Some("6"), Duration::from_secs(10), resync),
            None,
            "a failure here outweighs a success in the status"
        );
    }
}

#[cfg(test)]
mod restore_tests {
    use super::QuietPasses;
    use std::time::Duration;

    #[test]
    fn a_pass_recorded_in_the_status_is_believed_once_by_a_new_process_until_the_resync() {
        let resync = Duration::from_secs(300);
        let quiet = QuietPasses::default();
        let wait = quiet
            .restore("uid", 7, Some("10"), Duration::from_secs(100), resync)
            .expect("a recent pass with the same fingerprint");
        assert!(wait <= Duration::from_secs(200) && wait > Duration::from_secs(198));
        assert_eq!(
            quiet.restore("uid", 7, Some("10"), Duration::from_secs(100), resync),
            None,
            "once: from then on this process knows the object"
        );
        assert_eq!(
            quiet.remaining("uid", 7, Some("10"), resync),
            None,
            "the version already seen: woken by something else"
        );
        assert!(
            quiet.remaining("uid", 7, Some("11"), resync).is_some(),
            "a status write: quiet"
        );
        assert_eq!(
            quiet.restore("old", 7, Some("1"), Duration::from_secs(299), resync),
            None,
            "the resync is due"
        );
    }
}
