//! Safe reading of the zip inside every `.dat`/`.pat`/`.rpt` envelope, and the matching writer.
//!
//! The zip comes from outside, so this module assumes it lies: the entry count is checked against
//! the raw central directory before the zip crate looks at it (the crate silently collapses
//! duplicate names), every name is checked for path tricks, and while inflating the bytes actually
//! produced are counted against the per-entry, total and ratio limits; declared sizes are only a
//! fast first check, never trusted.
//!
//! It never writes anything to disk (entries are returned in memory) and its errors never quote
//! entry contents; entry names appear escaped and truncated.

use std::collections::HashSet;
use std::fmt;
use std::io::{Cursor, Read, Write};

use zip::result::ZipError;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

/// Limits for one archive. The defaults fit real data with a wide margin: a large patient holds a
/// few MB of XML in a few hundred files, and XML deflates 10 to 30 times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Most entries (files and directories) one archive may hold.
    pub max_entries: usize,
    /// Most bytes all entries together may inflate to.
    pub max_total_bytes: u64,
    /// Most bytes one entry may inflate to.
    pub max_entry_bytes: u64,
    /// Most an entry may inflate relative to its compressed size, once it is past
    /// `ratio_floor_bytes` (small entries of blanks legitimately compress very well).
    pub max_ratio: u64,
    /// Inflated size below which the ratio is not checked.
    pub ratio_floor_bytes: u64,
    /// Longest entry name, in bytes.
    pub max_name_len: usize,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_entries: 2_000,
            max_total_bytes: 256 * 1024 * 1024,
            max_entry_bytes: 64 * 1024 * 1024,
            max_ratio: 200,
            ratio_floor_bytes: 1024 * 1024,
            max_name_len: 255,
        }
    }
}

/// One file from an archive. `Debug` shows the name and size only: the data is health data.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's name as stored in the zip (checked to be a safe relative path).
    pub name: String,
    /// The inflated content.
    pub data: Vec<u8>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// The files of one archive, in central-directory order. Directory entries are dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Archive {
    /// The files.
    pub entries: Vec<Entry>,
}

impl Archive {
    /// The entry with exactly this name.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|entry| entry.name == name)
    }

    /// Total inflated bytes.
    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.data.len() as u64).sum()
    }
}

/// Why an entry name is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnsafeNameReason {
    /// Holds a NUL byte (truncates names in C APIs).
    Nul,
    /// Holds a control character.
    ControlCharacter,
    /// Starts with `/` or `\`.
    Absolute,
    /// Holds `:` (a drive letter such as `C:` or an NTFS stream).
    DriveOrStream,
    /// Has a `..` segment.
    ParentDirectory,
    /// Has a `.` segment.
    CurrentDirectory,
    /// Has an empty segment (`a//b`) or is empty.
    EmptySegment,
    /// A segment ends in `.` or a space, which Windows silently strips.
    TrailingDotOrSpace,
}

impl fmt::Display for UnsafeNameReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nul => "it holds a NUL byte",
            Self::ControlCharacter => "it holds a control character",
            Self::Absolute => "it is an absolute path",
            Self::DriveOrStream => "it holds ':' (a drive letter or stream name)",
            Self::ParentDirectory => "it has a '..' segment",
            Self::CurrentDirectory => "it has a '.' segment",
            Self::EmptySegment => "it has an empty path segment",
            Self::TrailingDotOrSpace => "a segment ends in '.' or a space",
        })
    }
}

/// Everything that makes an archive unacceptable. Names in the messages are escaped and
/// truncated; contents never appear.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Not a zip, or its directory structures are inconsistent.
    #[error("the archive is not a readable zip file: {0}")]
    Malformed(String),
    /// More entries than `max_entries`.
    #[error("the archive has {count} entries; at most {limit} are allowed")]
    TooManyEntries {
        /// Entries the central directory declares.
        count: u64,
        /// The limit.
        limit: usize,
    },
    /// No files at all.
    #[error("the archive holds no files")]
    Empty,
    /// A name longer than `max_name_len`.
    #[error("entry {index} has a name of {len} bytes; at most {limit} are allowed")]
    NameTooLong {
        /// Position in the central directory.
        index: usize,
        /// Length of the name in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A name that could escape the extraction folder or be misread.
    #[error("entry {index} has an unsafe name {name}: {reason}")]
    UnsafeName {
        /// Position in the central directory.
        index: usize,
        /// The name, escaped and truncated.
        name: String,
        /// What is wrong with it.
        reason: UnsafeNameReason,
    },
    /// Two entries with the same name (compared case-insensitively, `\` as `/`).
    #[error("entry name {name} appears more than once")]
    DuplicateName {
        /// The name, escaped and truncated.
        name: String,
    },
    /// An entry this reader does not accept (encrypted, symbolic link, unknown compression,
    /// directory with content).
    #[error("entry {name} is not supported: {reason}")]
    UnsupportedEntry {
        /// The name, escaped and truncated.
        name: String,
        /// Why.
        reason: String,
    },
    /// One entry inflates past `max_entry_bytes` (counted while inflating).
    #[error("entry {name} inflates past {limit} bytes, the limit for one entry")]
    EntryTooLarge {
        /// The name, escaped and truncated.
        name: String,
        /// The limit.
        limit: u64,
    },
    /// All entries together inflate past `max_total_bytes` (counted while inflating).
    #[error("the archive inflates past {limit} bytes in total, the limit")]
    TotalTooLarge {
        /// The limit.
        limit: u64,
    },
    /// An entry inflates more than `max_ratio` times its compressed size: a zip bomb.
    #[error("entry {name} inflates more than {limit} times its compressed size")]
    RatioTooHigh {
        /// The name, escaped and truncated.
        name: String,
        /// The limit.
        limit: u64,
    },
    /// An entry inflates to a different size than its header declares.
    #[error("entry {name} inflates to {actual} bytes but its header declares {declared}")]
    SizeMismatch {
        /// The name, escaped and truncated.
        name: String,
        /// Declared uncompressed size.
        declared: u64,
        /// Bytes actually produced.
        actual: u64,
    },
    /// Inflating failed (bad deflate data, CRC mismatch, truncated data).
    #[error("entry {name} is corrupt: {reason}")]
    CorruptEntry {
        /// The name, escaped and truncated.
        name: String,
        /// The zip reader's explanation (never contains data).
        reason: String,
    },
    /// Writing an archive failed.
    #[error("could not write the archive: {0}")]
    Write(String),
}

/// Reads every file of a zip held in memory, enforcing `limits`.
pub fn read_archive(bytes: &[u8], limits: &ArchiveLimits) -> Result<Archive, ArchiveError> {
    let raw_names = central_directory_names(bytes, limits)?;
    let mut seen = HashSet::with_capacity(raw_names.len());
    for raw in &raw_names {
        let key = String::from_utf8_lossy(raw)
            .replace('\\', "/")
            .trim_end_matches('/')
            .to_lowercase();
        if !seen.insert(key) {
            return Err(ArchiveError::DuplicateName {
                name: shown_name(&String::from_utf8_lossy(raw)),
            });
        }
    }

    let mut zip = ZipArchive::new(Cursor::new(bytes)).map_err(|e| malformed(&e))?;
    if zip.len() != raw_names.len() {
        return Err(ArchiveError::Malformed(
            "the central directory lists a different number of entries than the zip reader sees"
                .into(),
        ));
    }

    let mut entries = Vec::new();
    let mut total: u64 = 0;
    let mut declared_total: u64 = 0;
    for (index, raw_name) in raw_names.iter().enumerate() {
        let mut file = zip.by_index(index).map_err(|e| match e {
            ZipError::UnsupportedArchive(reason) => ArchiveError::UnsupportedEntry {
                name: shown_name(&String::from_utf8_lossy(raw_name)),
                reason: reason.to_owned(),
            },
            other => malformed(&other),
        })?;
        let name = file.name().to_owned();
        if file.name_raw().len() > limits.max_name_len {
            return Err(ArchiveError::NameTooLong {
                index,
                len: file.name_raw().len(),
                limit: limits.max_name_len,
            });
        }
        let is_directory = name.ends_with('/') || name.ends_with('\\');
        let path = if is_directory {
            &name[..name.len() - 1]
        } else {
            &name[..]
        };
        check_entry_name(path).map_err(|reason| ArchiveError::UnsafeName {
            index,
            name: shown_name(&name),
            reason,
        })?;
        let unsupported = |reason: &str| ArchiveError::UnsupportedEntry {
            name: shown_name(&name),
            reason: reason.to_owned(),
        };
        if file.encrypted() {
            return Err(unsupported("it is encrypted"));
        }
        if file.is_symlink() {
            return Err(unsupported("it is a symbolic link"));
        }
        if !matches!(
            file.compression(),
            CompressionMethod::Stored | CompressionMethod::Deflated
        ) {
            return Err(unsupported(
                "it uses a compression method other than deflate",
            ));
        }
        if is_directory {
            // An empty deflate stream takes two bytes, so only the declared size counts here;
            // the entry is never inflated either way.
            if file.size() != 0 {
                return Err(unsupported("it is a directory entry with content"));
            }
            continue;
        }

        // Fast rejection on the declared sizes; the real check is below while inflating.
        let declared = file.size();
        declared_total = declared_total.saturating_add(declared);
        if declared > limits.max_entry_bytes {
            return Err(ArchiveError::EntryTooLarge {
                name: shown_name(&name),
                limit: limits.max_entry_bytes,
            });
        }
        if declared_total > limits.max_total_bytes {
            return Err(ArchiveError::TotalTooLarge {
                limit: limits.max_total_bytes,
            });
        }

        let compressed = file.compressed_size();
        let data = inflate(&mut file, &name, compressed, total, limits)?;
        if data.len() as u64 != declared {
            return Err(ArchiveError::SizeMismatch {
                name: shown_name(&name),
                declared,
                actual: data.len() as u64,
            });
        }
        total += data.len() as u64;
        entries.push(Entry { name, data });
    }
    if entries.is_empty() {
        return Err(ArchiveError::Empty);
    }
    Ok(Archive { entries })
}

/// Inflates one entry, counting the bytes it really produces.
fn inflate(
    file: &mut impl Read,
    name: &str,
    compressed: u64,
    total_so_far: u64,
    limits: &ArchiveLimits,
) -> Result<Vec<u8>, ArchiveError> {
    let total_left = limits.max_total_bytes.saturating_sub(total_so_far);
    let entry_is_binding = limits.max_entry_bytes <= total_left;
    let budget = limits.max_entry_bytes.min(total_left);
    let mut data = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|e| ArchiveError::CorruptEntry {
                name: shown_name(name),
                reason: e.to_string(),
            })?;
        if read == 0 {
            break;
        }
        let produced = data.len() as u64 + read as u64;
        if produced > budget {
            return Err(if entry_is_binding {
                ArchiveError::EntryTooLarge {
                    name: shown_name(name),
                    limit: limits.max_entry_bytes,
                }
            } else {
                ArchiveError::TotalTooLarge {
                    limit: limits.max_total_bytes,
                }
            });
        }
        if produced > limits.ratio_floor_bytes
            && produced > compressed.max(1).saturating_mul(limits.max_ratio)
        {
            return Err(ArchiveError::RatioTooHigh {
                name: shown_name(name),
                limit: limits.max_ratio,
            });
        }
        data.extend_from_slice(&buffer[..read]);
    }
    Ok(data)
}

/// Checks one entry name (without a trailing directory slash) for path tricks. Both `/` and `\`
/// count as separators, since the files are made on Windows and may be unpacked there.
pub fn check_entry_name(name: &str) -> Result<(), UnsafeNameReason> {
    if name.contains('\0') {
        return Err(UnsafeNameReason::Nul);
    }
    if name.chars().any(char::is_control) {
        return Err(UnsafeNameReason::ControlCharacter);
    }
    if name.starts_with('/') || name.starts_with('\\') {
        return Err(UnsafeNameReason::Absolute);
    }
    if name.contains(':') {
        return Err(UnsafeNameReason::DriveOrStream);
    }
    for segment in name.split(['/', '\\']) {
        match segment {
            "" => return Err(UnsafeNameReason::EmptySegment),
            ".." => return Err(UnsafeNameReason::ParentDirectory),
            "." => return Err(UnsafeNameReason::CurrentDirectory),
            s if s.ends_with('.') || s.ends_with(' ') => {
                return Err(UnsafeNameReason::TrailingDotOrSpace);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Writes a deflated zip of the given files, in order. Used by the exporter and by tests; refuses
/// names [`read_archive`] would refuse.
pub fn write_archive(entries: &[(&str, &[u8])]) -> Result<Vec<u8>, ArchiveError> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for (name, data) in entries {
        check_entry_name(name).map_err(|reason| {
            ArchiveError::Write(format!(
                "entry name {} is unsafe: {reason}",
                shown_name(name)
            ))
        })?;
        writer
            .start_file(*name, options)
            .map_err(|e| ArchiveError::Write(e.to_string()))?;
        writer
            .write_all(data)
            .map_err(|e| ArchiveError::Write(e.to_string()))?;
    }
    let cursor = writer
        .finish()
        .map_err(|e| ArchiveError::Write(e.to_string()))?;
    Ok(cursor.into_inner())
}

fn malformed(error: &ZipError) -> ArchiveError {
    ArchiveError::Malformed(error.to_string())
}

/// An entry name fit for an error message: escaped, at most 80 characters.
fn shown_name(name: &str) -> String {
    const MAX: usize = 80;
    let mut shown: String = name.chars().take(MAX).collect();
    if name.chars().count() > MAX {
        shown.push('…');
    }
    format!("{shown:?}")
}

const EOCD_SIGNATURE: u32 = 0x0605_4b50;
const EOCD_LEN: usize = 22;
const ZIP64_LOCATOR_SIGNATURE: u32 = 0x0706_4b50;
const ZIP64_LOCATOR_LEN: usize = 20;
const ZIP64_EOCD_SIGNATURE: u32 = 0x0606_4b50;
const CENTRAL_HEADER_SIGNATURE: u32 = 0x0201_4b50;
const CENTRAL_HEADER_LEN: usize = 46;

/// Walks the central directory itself and returns the raw entry names, after checking the entry
/// count against the limit. The zip crate keeps entries in a map by name, so duplicates and the
/// declared count are only visible here.
fn central_directory_names(
    bytes: &[u8],
    limits: &ArchiveLimits,
) -> Result<Vec<Vec<u8>>, ArchiveError> {
    let bad = |what: &str| ArchiveError::Malformed(what.to_owned());
    let eocd = find_end_of_central_directory(bytes)
        .ok_or_else(|| bad("no end of central directory record"))?;
    let mut count = u64::from(le_u16(bytes, eocd + 10).ok_or_else(|| bad("truncated end record"))?);
    let mut directory_offset =
        u64::from(le_u32(bytes, eocd + 16).ok_or_else(|| bad("truncated end record"))?);
    if count == u64::from(u16::MAX) || directory_offset == u64::from(u32::MAX) {
        // Zip64: the real values are in the zip64 end record the locator points to.
        let locator = eocd
            .checked_sub(ZIP64_LOCATOR_LEN)
            .filter(|&at| le_u32(bytes, at) == Some(ZIP64_LOCATOR_SIGNATURE))
            .ok_or_else(|| bad("zip64 values without a zip64 locator"))?;
        let record = le_u64(bytes, locator + 8)
            .and_then(|at| usize::try_from(at).ok())
            .filter(|&at| le_u32(bytes, at) == Some(ZIP64_EOCD_SIGNATURE))
            .ok_or_else(|| bad("zip64 locator points nowhere"))?;
        count = le_u64(bytes, record + 32).ok_or_else(|| bad("truncated zip64 end record"))?;
        directory_offset =
            le_u64(bytes, record + 48).ok_or_else(|| bad("truncated zip64 end record"))?;
    }
    if count > limits.max_entries as u64 {
        return Err(ArchiveError::TooManyEntries {
            count,
            limit: limits.max_entries,
        });
    }
    let mut at = usize::try_from(directory_offset)
        .map_err(|_| bad("central directory offset out of range"))?;
    let mut names = Vec::with_capacity(count as usize);
    for _ in 0..count {
        if le_u32(bytes, at) != Some(CENTRAL_HEADER_SIGNATURE) {
            return Err(bad("central directory entry missing or misplaced"));
        }
        let name_len =
            usize::from(le_u16(bytes, at + 28).ok_or_else(|| bad("truncated central directory"))?);
        let extra_len =
            usize::from(le_u16(bytes, at + 30).ok_or_else(|| bad("truncated central directory"))?);
        let comment_len =
            usize::from(le_u16(bytes, at + 32).ok_or_else(|| bad("truncated central directory"))?);
        let name_start = at + CENTRAL_HEADER_LEN;
        let name = bytes
            .get(name_start..name_start + name_len)
            .ok_or_else(|| bad("truncated central directory"))?;
        names.push(name.to_vec());
        at = name_start + name_len + extra_len + comment_len;
    }
    Ok(names)
}

/// The end-of-central-directory record: the last signature whose comment length reaches exactly
/// the end of the data (so a fake record inside a comment is not taken).
fn find_end_of_central_directory(bytes: &[u8]) -> Option<usize> {
    let last = bytes.len().checked_sub(EOCD_LEN)?;
    let first = last.saturating_sub(usize::from(u16::MAX));
    (first..=last).rev().find(|&at| {
        le_u32(bytes, at) == Some(EOCD_SIGNATURE)
            && le_u16(bytes, at + 20).map(|comment| at + EOCD_LEN + usize::from(comment))
                == Some(bytes.len())
    })
}

fn le_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}
