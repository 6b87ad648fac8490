//! The HPR numbers of each database's users, read once per organisation file instead of once per
//! patient. Every patient's prescriptions and doctors must name users of the organisation file; the
//! users change only when an organisation file is stored, and each one stored sets the
//! organisation's row (`stored_file_id`, `updated_at`) in its own transaction, so that pair (read by
//! the guard in the patient's transaction, [`crate::api::guard::OrganisationFile`]) says whether a
//! set read earlier is still the database's.
//!
//! HPR numbers name health personnel, not patients. The cache is per replica and only saves reads:
//! a miss, a cleared cache or another replica reads the table as before.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use sqlx::PgConnection;
use uuid::Uuid;

use super::checks::hpr_key;
use crate::api::ApiError;
use crate::api::error::database;
use crate::api::guard::OrganisationFile;

/// How many databases' sets are kept; past it the cache starts again (a wave of organisations
/// migrating at once needs a read per organisation file, not per patient).
const DATABASES_KEPT: usize = 256;

/// The users' HPR numbers (normalised by [`hpr_key`]) as of one organisation file.
type HprNumbers = (OrganisationFile, Arc<HashSet<String>>);

/// Per database (its MigrationDatabase's UID): the users' HPR numbers as of the organisation file
/// they were read for.
#[derive(Default)]
pub struct KnownUsers(Mutex<HashMap<Uuid, HprNumbers>>);

impl KnownUsers {
    /// The users' HPR numbers as of `organisation_file`, read in `tx` when this replica has no set
    /// for that file (and not kept when there is no organisation file to version them by). A set
    /// read while a newer organisation file was committing is at least as new as
    /// `organisation_file`, as the read without a cache would have been; it is kept under the
    /// older file, which the next guard no longer finds.
    pub async fn hpr_numbers(
        &self,
        tx: &mut PgConnection,
        database_uid: Uuid,
        organisation_file: Option<OrganisationFile>,
    ) -> Result<Arc<HashSet<String>>, ApiError> {
        if let Some((file, numbers)) = self.lock().get(&database_uid)
            && Some(*file) == organisation_file
        {
            return Ok(numbers.clone());
        }
        let users: Vec<String> =
            sqlx::query_scalar("SELECT hpr FROM sfm.users WHERE hpr IS NOT NULL")
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| database("read the users' HPR numbers", e))?;
        let numbers: Arc<HashSet<String>> = Arc::new(users.iter().map(|h| hpr_key(h)).collect());
        let Some(organisation_file) = organisation_file else {
            return Ok(numbers);
        };
        let mut kept = self.lock();
        if kept.len() >= DATABASES_KEPT && !kept.contains_key(&database_uid) {
            kept.clear();
        }
        kept.insert(database_uid, (organisation_file, numbers.clone()));
        Ok(numbers)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, HprNumbers>> {
        // The map holds no invariant a panicking holder could break.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
