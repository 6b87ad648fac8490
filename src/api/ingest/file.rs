//! The file being ingested, as its upload row (or its creation request) describes it: what every
//! writer records in the audit trail.

/// The file being ingested and who sent it: what the audit trail records.
pub struct Claimed {
    pub file_name: String,
    pub file_type: String,
    pub migration_key_id: String,
    pub helseid_client_id: Option<String>,
    /// SHA-256 of the file as received (the envelope).
    pub sha256: Vec<u8>,
    pub size: i64,
    pub completed_at: chrono::DateTime<chrono::Utc>,
}

/// SHA-256 of the bytes as received.
pub fn digest(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}
