//! What the host takes from outside, bounded before it is trusted: files read under a cap
//! ([`read_file`]), and text made safe to stand in a metric label ([`LabelValue`]).
//!
//! Every file an operator or an attacker can point the host at — a host configuration, a
//! policy's `@file` configuration, a scenario, a token, a key, the quarantine, a module — is
//! read here: a regular file only (a FIFO would block the reader, a device such as `/dev/zero`
//! never ends, a directory is a mistake), symlinks resolved and the target checked, and never
//! more than the cap for its kind, whatever the file's metadata says.

use std::io::Read;
use std::path::{Path, PathBuf};

/// What a file holds, with the most bytes the host reads of such a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileKind {
    /// What the file is, in words (`host configuration`, `admin token`, …).
    pub name: &'static str,
    /// The most bytes read.
    pub cap: u64,
}

impl FileKind {
    /// A host configuration (JSON): 1 MiB, as the threat model promises.
    pub const HOST_CONFIG: FileKind = FileKind {
        name: "host configuration",
        cap: 1 << 20,
    };
    /// A policy's own configuration (`--config @file`).
    pub const POLICY_CONFIG: FileKind = FileKind {
        name: "policy configuration",
        cap: 1 << 20,
    };
    /// A scenario for the fault server or the simulator.
    pub const SCENARIO: FileKind = FileKind {
        name: "scenario",
        cap: 4 << 20,
    };
    /// A secret: an admin token, a fleet key.
    pub const SECRET: FileKind = FileKind {
        name: "secret",
        cap: 4 << 10,
    };
    /// A PEM certificate bundle (a Redis CA).
    pub const CERTIFICATE: FileKind = FileKind {
        name: "certificate",
        cap: 1 << 20,
    };
    /// A policy module (`.wasm` or `.cwasm`). The default is about 130 KB; a policy in a
    /// language with a runtime is 12-18 MB (JavaScript, Python) and up to ~35 MB with
    /// libraries, and its `.cwasm` is two to three times that (37-40 MB for the examples).
    pub const MODULE: FileKind = FileKind {
        name: "policy module",
        cap: 128 << 20,
    };
    /// A module compiled to native code in the host's cache (larger than its `.wasm`).
    pub const COMPILED: FileKind = FileKind {
        name: "compiled module",
        cap: 128 << 20,
    };
    /// A policy author's test cases (`backstop test`).
    pub const CASES: FileKind = FileKind {
        name: "case file",
        cap: 4 << 20,
    };
    /// The quarantine's list of held digests.
    pub const QUARANTINE: FileKind = FileKind {
        name: "quarantine file",
        cap: 1 << 20,
    };
}

/// `text` with control characters (newlines, ANSI escapes, …) written as `\n`, `\u{1b}`: what
/// came from outside, safe to print as one line of a log or a terminal.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Why a file from outside was not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// It could not be opened or read.
    #[error("{kind} {path}: {source}")]
    Io {
        /// What it was to be.
        kind: &'static str,
        /// The path as given.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// It is not a regular file.
    #[error("{kind} {path}{resolved}: {what}, not a regular file; refused without reading it")]
    NotRegular {
        /// What it was to be.
        kind: &'static str,
        /// The path as given.
        path: PathBuf,
        /// ` (→ target)` when the path was a symlink.
        resolved: String,
        /// What it is (`a FIFO`, `a device`, `a directory`, …).
        what: &'static str,
    },
    /// It holds more than its kind may.
    #[error("{kind} {path}: more than {cap} bytes; a {kind} may have at most {cap}")]
    TooLarge {
        /// What it was to be.
        kind: &'static str,
        /// The path as given.
        path: PathBuf,
        /// The cap.
        cap: u64,
    },
    /// It is not UTF-8 text.
    #[error("{kind} {path}: not UTF-8 text")]
    NotText {
        /// What it was to be.
        kind: &'static str,
        /// The path as given.
        path: PathBuf,
    },
}

impl FileError {
    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Reads the file at `path` as a file of `kind`: a regular file (after symlinks) of at most
/// `kind.cap` bytes, read with a bound (one byte past the cap at most), so neither a device, a
/// FIFO, a sparse file nor a file that grows while read can make the process wait or grow.
pub fn read_file(path: &Path, kind: FileKind) -> Result<Vec<u8>, FileError> {
    let io = |source| FileError::Io {
        kind: kind.name,
        path: path.to_path_buf(),
        source,
    };
    // Before opening: opening a FIFO for reading blocks until a writer comes.
    let metadata = std::fs::metadata(path).map_err(io)?;
    let not_regular = |metadata: &std::fs::Metadata| {
        let what = what_it_is(metadata)?;
        let resolved = std::fs::canonicalize(path)
            .ok()
            .filter(|target| target != path)
            .map(|target| format!(" (→ {})", target.display()))
            .unwrap_or_default();
        Some(FileError::NotRegular {
            kind: kind.name,
            path: path.to_path_buf(),
            resolved,
            what,
        })
    };
    if let Some(refused) = not_regular(&metadata) {
        return Err(refused);
    }
    let file = open_without_blocking(path).map_err(io)?;
    // The path may have been swapped for something else between the two looks: judge what
    // was opened.
    let opened = file.metadata().map_err(io)?;
    if let Some(refused) = not_regular(&opened) {
        return Err(refused);
    }
    let too_large = || FileError::TooLarge {
        kind: kind.name,
        path: path.to_path_buf(),
        cap: kind.cap,
    };
    if opened.len() > kind.cap {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(opened.len() as usize);
    file.take(kind.cap + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > kind.cap {
        return Err(too_large());
    }
    Ok(bytes)
}

/// [`read_file`], as UTF-8 text.
pub fn read_text(path: &Path, kind: FileKind) -> Result<String, FileError> {
    String::from_utf8(read_file(path, kind)?).map_err(|_| FileError::NotText {
        kind: kind.name,
        path: path.to_path_buf(),
    })
}

/// A secret (a token, a key) from `file` when one is given, else from the environment variable
/// `env`: its text, trimmed, and where it came from; `None` when neither holds one.
pub fn read_secret(file: Option<&Path>, env: &str) -> Result<Option<(String, String)>, FileError> {
    if let Some(path) = file {
        let text = read_text(path, FileKind::SECRET)?;
        return Ok(Some((text.trim().to_string(), path.display().to_string())));
    }
    Ok(std::env::var(env)
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
        .map(|text| (text, env.to_string())))
}

/// What a file that is not a regular file is; `None` for a regular file.
fn what_it_is(metadata: &std::fs::Metadata) -> Option<&'static str> {
    let kind = metadata.file_type();
    if kind.is_file() {
        return None;
    }
    if kind.is_dir() {
        return Some("a directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return Some("a FIFO");
        }
        if kind.is_char_device() || kind.is_block_device() {
            return Some("a device");
        }
        if kind.is_socket() {
            return Some("a socket");
        }
    }
    Some("not a file")
}

#[cfg(unix)]
fn open_without_blocking(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: should a FIFO take the file's place after the first look, opening it does
    // not wait for a writer (the second look then refuses it).
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_without_blocking(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

/// Text from outside (a caller's model id, a module's name or version) as a Prometheus label
/// value: escaped as the text format requires (`\\`, `\"`, `\n`), other control characters
/// replaced by `�`, and at most [`LabelValue::MAX_CHARS`] characters (longer ends in `…`), so
/// no value can end its sample, forge another or carry a terminal escape.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct LabelValue(String);

impl LabelValue {
    /// The most characters a value keeps.
    pub const MAX_CHARS: usize = 128;

    /// The value, as it was given (escaping happens when it is encoded).
    pub fn new(text: &str) -> LabelValue {
        let mut value: String = text
            .chars()
            .take(Self::MAX_CHARS)
            .map(|c| {
                if c.is_control() && c != '\n' {
                    '\u{fffd}'
                } else {
                    c
                }
            })
            .collect();
        if text.chars().nth(Self::MAX_CHARS).is_some() {
            value.pop();
            value.push('…');
        }
        LabelValue(value)
    }

    /// The value as it will read once unescaped.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for LabelValue {
    fn from(text: &str) -> LabelValue {
        LabelValue::new(text)
    }
}

impl prometheus_client::encoding::EncodeLabelValue for LabelValue {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("backstop-untrusted-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn a_device_is_refused_without_reading_it() {
        let error = read_file(Path::new("/dev/zero"), FileKind::HOST_CONFIG).unwrap_err();
        assert!(
            matches!(
                error,
                FileError::NotRegular {
                    what: "a device",
                    ..
                }
            ),
            "{error}"
        );
        assert!(
            error.to_string().contains("host configuration /dev/zero"),
            "{error}"
        );
    }

    #[test]
    fn a_fifo_is_refused_at_once_rather_than_waited_on() {
        let dir = scratch("fifo");
        let fifo = dir.join("host.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let error = read_file(&fifo, FileKind::HOST_CONFIG).unwrap_err();
        assert!(
            matches!(error, FileError::NotRegular { what: "a FIFO", .. }),
            "{error}"
        );
    }

    #[test]
    fn a_symlink_is_followed_and_its_target_judged() {
        let dir = scratch("link");
        let link = dir.join("token");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let error = read_file(&link, FileKind::SECRET).unwrap_err();
        assert!(error.to_string().contains("(→ /dev/zero)"), "{error}");
        let good = dir.join("good");
        std::fs::write(&good, "x".repeat(20)).unwrap();
        let to_good = dir.join("to-good");
        std::os::unix::fs::symlink(&good, &to_good).unwrap();
        assert_eq!(read_file(&to_good, FileKind::SECRET).unwrap().len(), 20);
    }

    #[test]
    fn a_sparse_file_past_its_cap_is_refused_before_a_byte_is_read() {
        let dir = scratch("sparse");
        let path = dir.join("host.json");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(3 << 30).unwrap();
        let error = read_file(&path, FileKind::HOST_CONFIG).unwrap_err();
        assert!(
            matches!(error, FileError::TooLarge { cap, .. } if cap == 1 << 20),
            "{error}"
        );
        assert!(error.to_string().contains("at most 1048576"), "{error}");
        std::fs::write(&path, vec![b' '; 1 << 20]).unwrap();
        assert_eq!(
            read_file(&path, FileKind::HOST_CONFIG).unwrap().len(),
            1 << 20,
            "the cap itself is allowed"
        );
    }

    #[test]
    fn a_label_value_cannot_end_its_sample_or_forge_another() {
        use prometheus_client::encoding::EncodeLabelSet;
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Labels {
            chain: LabelValue,
        }
        let family = prometheus_client::metrics::family::Family::<
            Labels,
            prometheus_client::metrics::counter::Counter,
        >::default();
        let hostile = "evil\"} 1\nbackstop_forged_total 0\n#\u{1b}[31m\\";
        family
            .get_or_create(&Labels {
                chain: hostile.into(),
            })
            .inc();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("requests", "r", family);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(!text.contains("\nbackstop_forged_total"), "{text}");
        assert!(
            text.contains(
                r#"requests_total{chain="evil\"} 1\nbackstop_forged_total 0\n#�[31m\\"} 1"#
            ),
            "{text}"
        );
        let long = LabelValue::new(&"m".repeat(1000));
        assert_eq!(long.as_str().chars().count(), LabelValue::MAX_CHARS);
        assert!(long.as_str().ends_with('…'));
    }
}
