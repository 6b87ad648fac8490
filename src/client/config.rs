//! The client's own files, in the user's config directory (`$SFM_MIGRATE_CONFIG_DIR`, else
//! `$XDG_CONFIG_HOME/sfm-migrate`, else `~/.config/sfm-migrate`): `keys.json` (several migration keys,
//! one active) and `token.json` (the HelseID access token from `login`). Both are written with mode
//! 0600 in a 0700 directory, replaced atomically, and refused when others can read them.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Failure, Outcome, io_failure};
use crate::contract::MigrationKeyToken;

/// The environment variable that overrides the config directory.
pub const CONFIG_DIR_ENV: &str = "SFM_MIGRATE_CONFIG_DIR";
/// The key store's file name.
pub const KEYS_FILE: &str = "keys.json";
/// The token file's name.
pub const TOKEN_FILE: &str = "token.json";

/// The config directory: the flag, else [`CONFIG_DIR_ENV`], else the XDG default.
pub fn config_dir(flag: Option<&Path>) -> Outcome<PathBuf> {
    if let Some(dir) = flag {
        return Ok(dir.to_owned());
    }
    if let Some(dir) = std::env::var_os(CONFIG_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("sfm-migrate"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("sfm-migrate")),
        None => Err(Failure::new(
            "There is no home directory to keep the client's keys in.",
            format!("set {CONFIG_DIR_ENV} or pass --config-dir to name a private directory"),
        )),
    }
}

/// Reads a private file; `None` when it does not exist. Refuses a file others can read.
fn read_private(path: &Path) -> Outcome<Option<Vec<u8>>> {
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_failure("read", path, &error)),
    };
    if metadata.permissions().mode() & 0o077 != 0 {
        return Err(Failure::new(
            format!(
                "{} can be read by other users, so the secrets in it may have leaked.",
                path.display()
            ),
            format!(
                "run `chmod 600 {}`, and ask NHN for a new migration key if others may have read it",
                path.display()
            ),
        ));
    }
    fs::read(path)
        .map(Some)
        .map_err(|e| io_failure("read", path, &e))
}

/// Writes a private file atomically: a 0600 temporary file in the same 0700 directory, then rename.
fn write_private(path: &Path, bytes: &[u8]) -> Outcome<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| io_failure("create", dir, &e))?;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_failure("write", &tmp, &e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_failure("write", &tmp, &e))?;
    fs::rename(&tmp, path).map_err(|e| io_failure("write", path, &e))
}

/// One registered migration key.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredKey {
    /// The user's name for it (e.g. the organisation).
    pub name: String,
    /// The whole token `sfmk_<keyId>_<secret>`.
    pub key: String,
    /// The migration API it is for, when given at `key add`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    pub added_at: DateTime<Utc>,
}

impl StoredKey {
    /// The key id (not secret).
    pub fn key_id(&self) -> String {
        self.token()
            .map(|t| t.key_id().to_owned())
            .unwrap_or_else(|_| "?".into())
    }

    /// The parsed token.
    pub fn token(&self) -> Outcome<MigrationKeyToken> {
        self.key.parse().map_err(|_| {
            Failure::new(
                format!("The stored key {:?} is damaged.", self.name),
                format!(
                    "remove it with `sfm-migrate key remove {}` and add it again",
                    self.name
                ),
            )
        })
    }
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("name", &self.name)
            .field("key_id", &self.key_id())
            .field("api", &self.api)
            .finish()
    }
}

/// The key store: several keys, at most one active.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyStore {
    #[serde(default)]
    pub active: Option<String>,
    #[serde(default)]
    pub keys: Vec<StoredKey>,
}

fn check_name(name: &str) -> Outcome<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Failure::new(
            "A key name must be 1 to 64 letters, digits, '-', '_' or '.'.",
            "choose a name such as `oslo-legekontor`",
        ));
    }
    Ok(())
}

impl KeyStore {
    /// Loads `keys.json` from `dir` (empty when missing).
    pub fn load(dir: &Path) -> Outcome<Self> {
        let path = dir.join(KEYS_FILE);
        match read_private(&path)? {
            None => Ok(KeyStore::default()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|_| {
                Failure::new(
                    format!("{} is not a valid key store.", path.display()),
                    "move it away and add your keys again with `sfm-migrate key add`",
                )
            }),
        }
    }

    /// Writes `keys.json` into `dir` (mode 0600).
    pub fn save(&self, dir: &Path) -> Outcome<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("the key store serialises");
        write_private(&dir.join(KEYS_FILE), &bytes)
    }

    /// Adds a key under `name`; it becomes active when it is the first, or when `activate` is set.
    pub fn add(
        &mut self,
        name: &str,
        key: &str,
        api: Option<String>,
        activate: bool,
    ) -> Outcome<()> {
        check_name(name)?;
        let key = key.trim();
        let token: MigrationKeyToken = key.parse().map_err(|error| {
            Failure::new(
                format!("That is not a migration key ({error})."),
                "paste the whole key NHN gave you; it reads sfmk_<keyId>_<secret>",
            )
        })?;
        if self.keys.iter().any(|k| k.name == name) {
            return Err(Failure::new(
                format!("A key named {name:?} is already registered."),
                format!("choose another name, or `sfm-migrate key remove {name}` first"),
            ));
        }
        if let Some(existing) = self.keys.iter().find(|k| k.key_id() == token.key_id()) {
            return Err(Failure::new(
                format!("This key is already registered as {:?}.", existing.name),
                format!("use it with `sfm-migrate key use {}`", existing.name),
            ));
        }
        self.keys.push(StoredKey {
            name: name.to_owned(),
            key: token.expose(),
            api,
            added_at: Utc::now(),
        });
        if activate || self.active.is_none() {
            self.active = Some(name.to_owned());
        }
        Ok(())
    }

    /// Makes `name` the active key.
    pub fn use_key(&mut self, name: &str) -> Outcome<()> {
        if !self.keys.iter().any(|k| k.name == name) {
            return Err(self.unknown(name));
        }
        self.active = Some(name.to_owned());
        Ok(())
    }

    /// Removes `name`; if it was active, no key is active afterwards.
    pub fn remove(&mut self, name: &str) -> Outcome<()> {
        let before = self.keys.len();
        self.keys.retain(|k| k.name != name);
        if self.keys.len() == before {
            return Err(self.unknown(name));
        }
        if self.active.as_deref() == Some(name) {
            self.active = None;
        }
        Ok(())
    }

    /// The active key.
    pub fn active_key(&self) -> Outcome<&StoredKey> {
        let no_key = || {
            if self.keys.is_empty() {
                Failure::new(
                    "No migration key is registered.",
                    "register the key NHN gave you with `sfm-migrate key add <name>` (it reads the key from standard input)",
                )
            } else {
                Failure::new(
                    "None of the registered migration keys is active.",
                    "choose one with `sfm-migrate key use <name>` (see `sfm-migrate key list`)",
                )
            }
        };
        let name = self.active.as_deref().ok_or_else(no_key)?;
        self.keys.iter().find(|k| k.name == name).ok_or_else(no_key)
    }

    fn unknown(&self, name: &str) -> Failure {
        Failure::new(
            format!("No key named {name:?} is registered."),
            "see the registered keys with `sfm-migrate key list`",
        )
    }
}

/// The HelseID access token from `login`, kept beside the keys.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredToken {
    pub access_token: String,
    /// `Bearer` or `DPoP`.
    pub token_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The DPoP key (PKCS#8 PEM, EC P-256) the token is bound to, for DPoP tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_key_pem: Option<String>,
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl StoredToken {
    /// Loads `token.json` from `dir`, if any.
    pub fn load(dir: &Path) -> Outcome<Option<Self>> {
        let path = dir.join(TOKEN_FILE);
        match read_private(&path)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|_| {
                Failure::new(
                    format!("{} is not a valid token file.", path.display()),
                    "log in again with `sfm-migrate login`",
                )
            }),
        }
    }

    /// Writes `token.json` into `dir` (mode 0600).
    pub fn save(&self, dir: &Path) -> Outcome<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("the token serialises");
        write_private(&dir.join(TOKEN_FILE), &bytes)
    }

    /// Whether it has expired (with a minute's margin).
    pub fn is_expired(&self) -> bool {
        self.expires_at
            .is_some_and(|at| at <= Utc::now() + chrono::Duration::seconds(60))
    }
}
