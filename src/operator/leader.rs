//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas only one
//! reconciles at a time (kube has no leader election built in).
//!
//! The protocol is client-go's: the holder renews `renewTime` every `renew_every`; a candidate takes the
//! Lease over once it has seen the same Lease unchanged for a whole `lease_duration` by its own clock
//! (it never compares the holder's timestamps with its own clock, so clock skew between nodes does not
//! matter), and every write is a replace with the `resourceVersion` it read, so two candidates cannot
//! both win. A holder that fails to renew within `renew_deadline` stops leading at once.
//!
//! A Lease alone gives no fencing: a paused ex-leader can still be mid-reconcile when another takes
//! over. That is why every change to a database is also made under a PostgreSQL advisory lock
//! (`postgres::provision::AdminSession::open`).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

/// Timings of the election, as client-go's defaults.
#[derive(Clone, Debug)]
pub struct Timings {
    /// How long a Lease must stay unchanged before a candidate may take it.
    pub lease_duration: Duration,
    /// The holder gives up leading when it could not renew for this long.
    pub renew_deadline: Duration,
    /// How often the holder renews and a candidate looks again.
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One candidate for the Lease `name` in `namespace`.
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
    /// The Lease as last seen, and when it was first seen in that version (by our clock).
    observed: Option<(String, Instant)>,
}

/// What one attempt at the Lease found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Leading,
    HeldBy(String),
}

impl LeaderElection {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timings: Timings) -> LeaderElection {
        LeaderElection {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            timings,
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&mut self) {
        let mut last_holder = String::new();
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if holder != last_holder {
                        tracing::info!(lease = %self.name, %holder, "another operator leads; standing by");
                        last_holder = holder;
                    }
                }
                Err(error) => {
                    tracing::warn!(lease = %self.name, %error, "could not read or take the Lease")
                }
            }
            tokio::time::sleep(self.timings.retry_period).await;
        }
    }

    /// Renews the Lease until a renewal has failed for longer than the renew deadline, or another
    /// candidate holds it; returns then. The caller must stop reconciling at once.
    pub async fn hold(&mut self) -> String {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.timings.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => last_renewal = Instant::now(),
                Ok(Attempt::HeldBy(holder)) => {
                    return format!("the Lease is now held by {holder}");
                }
                Err(error) => {
                    tracing::warn!(lease = %self.name, %error, "could not renew the Lease");
                    if last_renewal.elapsed() > self.timings.renew_deadline {
                        return format!(
                            "the Lease was not renewed for {}s",
                            self.timings.renew_deadline.as_secs()
                        );
                    }
                }
            }
        }
    }

    /// Gives the Lease up (on a clean shutdown) so a standby takes over without waiting for expiry.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "released the Lease"),
            Err(error) => tracing::warn!(lease = %self.name, %error, "could not release the Lease"),
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let duration_seconds = self.timings.lease_duration.as_secs() as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_seconds),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                // Another candidate created it first.
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    Ok(Attempt::HeldBy("another candidate".into()))
                }
                Err(error) => Err(error),
            };
        };

        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let seen_since = match &self.observed {
            Some((seen, since)) if *seen == version => *since,
            _ => {
                let now = Instant::now();
                self.observed = Some((version, now));
                now
            }
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let leading = holder == self.identity;
        // A released Lease says so with a short duration; an unreleased one expires after its own.
        let held_for = Duration::from_secs(
            spec.lease_duration_seconds
                .unwrap_or(duration_seconds)
                .max(1) as u64,
        );
        let expired = holder.is_empty() || seen_since.elapsed() >= held_for;
        if !leading && !expired {
            return Ok(Attempt::HeldBy(holder));
        }
        if !leading {
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(duration_seconds);
        spec.renew_time = Some(now());
        // The replace carries the resourceVersion read above: if anyone wrote in between, it fails
        // with a conflict and nobody has taken the Lease twice.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observed = written
                    .metadata
                    .resource_version
                    .map(|version| (version, Instant::now()));
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                Ok(Attempt::HeldBy("another candidate".into()))
            }
            Err(error) => Err(error),
        }
    }
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

/// A name for this process that is unique among the candidates: the Pod name in a cluster, else the
/// host name, plus a random suffix so two processes on one host differ.
pub fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "sfm-operator".into());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{base}_{suffix}")
}
