//! What the hub says about a commit, checked before it names anything on disk.
//!
//! The listing (`/api/models/<repo>/revision/<rev>?blobs=true`) gives the
//! commit id and, per file, its name, size and hashes. All of these end up in
//! cache paths (`snapshots/<commit>/<name>`, `blobs/<hash>`), so each is
//! accepted only in its expected form: a commit is 40 lowercase hex digits, an
//! LFS sha256 64, a git blob id 40, a file name plain relative components, and
//! every file has a size. The whole listing is checked, including files
//! webqwen does not fetch: an answer like that is not from a sound hub.

use std::collections::HashMap;
use std::path::{Component, Path};

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;
use sha1::Digest as _;

/// What a file's bytes must hash to; also its blob's name in the cache
/// (`blobs/<hex>`, as `huggingface_hub` names it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Digest {
    /// sha256 of the content (LFS files: the weights). 64 lowercase hex digits.
    Sha256(String),
    /// git's blob id: sha1 of `"blob <length>\0"` followed by the content
    /// (small files kept in git). 40 lowercase hex digits.
    GitBlob(String),
}

impl Digest {
    pub(crate) fn hex(&self) -> &str {
        match self {
            Digest::Sha256(hex) | Digest::GitBlob(hex) => hex,
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Digest::Sha256(_) => "sha256",
            Digest::GitBlob(_) => "git blob id",
        }
    }

    /// The digest a blob's file name stands for, if it is one.
    pub(crate) fn from_blob_name(name: &str) -> Option<Digest> {
        if is_hex(name, 64) {
            Some(Digest::Sha256(name.into()))
        } else if is_hex(name, 40) {
            Some(Digest::GitBlob(name.into()))
        } else {
            None
        }
    }
}

/// Hashes bytes the way a [`Digest`] of the same kind was made.
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    GitBlob(sha1::Sha1),
}

impl Hasher {
    /// `len` is the full length of the content (part of a git blob id).
    pub(crate) fn new(kind: &Digest, len: u64) -> Hasher {
        match kind {
            Digest::Sha256(_) => Hasher::Sha256(sha2::Sha256::new()),
            Digest::GitBlob(_) => {
                let mut sha1 = sha1::Sha1::new();
                sha1.update(format!("blob {len}\0").as_bytes());
                Hasher::GitBlob(sha1)
            }
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::GitBlob(h) => h.update(bytes),
        }
    }

    /// Lowercase hex, comparable with [`Digest::hex`].
    pub(crate) fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => format!("{:x}", h.finalize()),
            Hasher::GitBlob(h) => format!("{:x}", h.finalize()),
        }
    }
}

/// `len` lowercase hex digits.
pub(crate) fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A full commit id (what `snapshots/` and `refs/` hold).
pub(crate) fn is_commit(s: &str) -> bool {
    is_hex(s, 40)
}

/// A relative name made of plain components separated by `/`: nothing that
/// leaves the directory it is joined to (no `..`, no root, no drive, no
/// backslash, no empty or `.` component).
pub(crate) fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['\\', '\0'])
        && name.split('/').all(|part| !matches!(part, "" | "." | ".."))
        && Path::new(name).components().all(|c| matches!(c, Component::Normal(_)))
}

/// A server-sent value in an error message: quoted, and cut short.
pub(crate) fn shown(value: &str) -> String {
    let cut: String = value.chars().take(80).collect();
    if cut.len() < value.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// One file to fetch, checked.
#[derive(Clone, Debug)]
pub(crate) struct RemoteFile {
    pub name: String,
    pub size: u64,
    pub digest: Digest,
    /// The git blob id; for LFS files that of the pointer, which the hub may
    /// send as the `etag` of the file.
    pub blob_id: Option<String>,
}

/// A commit's listing, checked: its id and its files.
pub(crate) struct Listing {
    pub commit: String,
    files: HashMap<String, RemoteFile>,
}

#[derive(Deserialize)]
struct RawInfo {
    sha: String,
    siblings: Vec<RawSibling>,
}

#[derive(Deserialize)]
struct RawSibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<RawLfs>,
}

#[derive(Deserialize)]
struct RawLfs {
    sha256: String,
    size: Option<u64>,
}

impl Listing {
    /// Parses the hub's JSON and checks the commit id and every file in it;
    /// `source` names the hub in errors.
    pub(crate) fn parse(json: &[u8], source: &str) -> Result<Listing> {
        let info: RawInfo =
            serde_json::from_slice(json).map_err(|e| anyhow!("{source} sent an unexpected file listing: {e}"))?;
        if !is_commit(&info.sha) {
            bail!(
                "{source} sent {} as the commit id, not 40 lowercase hex digits; refusing it. Is \
                 HF_ENDPOINT a Hugging Face hub?",
                shown(&info.sha)
            );
        }
        let files =
            info.siblings.into_iter().map(|s| Ok((s.rfilename.clone(), checked(s, source)?))).collect::<Result<_>>()?;
        Ok(Listing { commit: info.sha, files })
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    pub(crate) fn file(&self, name: &str) -> Result<&RemoteFile> {
        self.files.get(name).ok_or_else(|| anyhow!("the hub does not list {} at commit {}", shown(name), self.commit))
    }
}

/// A listed file with its name, hashes and size in their expected forms.
fn checked(sibling: RawSibling, source: &str) -> Result<RemoteFile> {
    let name = sibling.rfilename;
    let refuse = |what: String| {
        anyhow!("{source} lists {} with {what}; refusing it. Is HF_ENDPOINT a Hugging Face hub?", shown(&name))
    };
    if !is_plain_file_name(&name) {
        return Err(refuse("a name that is not a plain relative file name".into()));
    }
    let blob_id = match sibling.blob_id {
        Some(id) if !is_hex(&id, 40) => {
            return Err(refuse(format!("the blobId {}, not 40 lowercase hex digits", shown(&id))))
        }
        id => id,
    };
    let (digest, size) = match sibling.lfs {
        Some(lfs) => {
            if !is_hex(&lfs.sha256, 64) {
                return Err(refuse(format!("the lfs.sha256 {}, not 64 lowercase hex digits", shown(&lfs.sha256))));
            }
            if let (Some(a), Some(b)) = (lfs.size, sibling.size) {
                if a != b {
                    return Err(refuse(format!("two sizes, {a} and {b}")));
                }
            }
            (Digest::Sha256(lfs.sha256), lfs.size.or(sibling.size))
        }
        None => match &blob_id {
            Some(id) => (Digest::GitBlob(id.clone()), sibling.size),
            None => return Err(refuse("no blobId or lfs.sha256 to check it against".into())),
        },
    };
    let size = size.ok_or_else(|| refuse("no size".into()))?;
    Ok(RemoteFile { name, size, digest, blob_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
    const BLOB: &str = "ce013625030ba8dba906f756967f9e9ca394464a";
    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn hashes_match_git_and_sha256sum() {
        // `printf 'hello\n' | sha256sum` and `| git hash-object --stdin`
        let mut h = Hasher::new(&Digest::Sha256(String::new()), 6);
        h.update(b"hel");
        h.update(b"lo\n");
        assert_eq!(h.finish(), SHA);
        let mut h = Hasher::new(&Digest::GitBlob(String::new()), 6);
        h.update(b"hello\n");
        assert_eq!(h.finish(), BLOB);
    }

    #[test]
    fn commits_and_blob_names() {
        assert!(is_commit(COMMIT));
        for bad in [
            "",
            "../../..",
            &COMMIT[1..],
            &format!("{COMMIT}0"),
            &COMMIT.to_uppercase(),
            "0123456789abcdef0123456789abcdef0123456g",
            "/23456789abcdef0123456789abcdef012345678",
        ] {
            assert!(!is_commit(bad), "{bad}");
        }
        assert_eq!(Digest::from_blob_name(SHA), Some(Digest::Sha256(SHA.into())));
        assert_eq!(Digest::from_blob_name(BLOB), Some(Digest::GitBlob(BLOB.into())));
        for bad in ["", "x", "../../../../secret", &SHA[1..], &format!("{SHA}.verified")] {
            assert_eq!(Digest::from_blob_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn file_names() {
        for good in ["config.json", "sub/dir/model-00001-of-00002.safetensors", "a b", ".x"] {
            assert!(is_plain_file_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/../../b",
            "/etc/passwd",
            "a//b",
            "a/",
            "./a",
            "a/./b",
            "a\\..\\b",
            "C:\\x",
            "a\0b",
        ] {
            assert!(!is_plain_file_name(bad), "{bad:?}");
        }
    }

    fn listing(sha: &str, sibling: serde_json::Value) -> Result<Listing> {
        let json = serde_json::json!({"sha": sha, "siblings": [sibling]});
        Listing::parse(json.to_string().as_bytes(), "the hub")
    }

    #[test]
    fn listing_commit_is_checked() {
        let sib = serde_json::json!({"rfilename": "a", "size": 6, "blobId": BLOB});
        assert_eq!(listing(COMMIT, sib.clone()).unwrap().commit, COMMIT);
        for bad in ["../../../../x", "/abs", "main", &COMMIT.to_uppercase()] {
            let err = listing(bad, sib.clone()).err().expect(bad).to_string();
            assert!(err.contains("commit id"), "{err}");
        }
        let err = Listing::parse(b"{\"sha\": 5}", "the hub").err().unwrap();
        assert!(err.to_string().contains("unexpected file listing"), "{err}");
    }

    #[test]
    fn listed_files_are_checked() {
        let file = |sib: serde_json::Value| {
            let name = sib["rfilename"].as_str().unwrap().to_string();
            listing(COMMIT, sib).and_then(|l| l.file(&name).cloned())
        };
        let git = file(serde_json::json!({"rfilename": "config.json", "size": 6, "blobId": BLOB})).unwrap();
        assert_eq!((git.size, git.digest), (6, Digest::GitBlob(BLOB.into())));
        let lfs = file(serde_json::json!({"rfilename": "m.safetensors", "size": 6, "blobId": BLOB,
            "lfs": {"sha256": SHA, "size": 6, "pointerSize": 134}}))
        .unwrap();
        assert_eq!((lfs.size, lfs.digest), (6, Digest::Sha256(SHA.into())));
        assert_eq!(lfs.blob_id.as_deref(), Some(BLOB));

        for (sib, says) in [
            (serde_json::json!({"rfilename": "../../x.json", "size": 6, "blobId": BLOB}), "plain relative"),
            (serde_json::json!({"rfilename": "/abs.json", "size": 6, "blobId": BLOB}), "plain relative"),
            (serde_json::json!({"rfilename": "a", "size": 6, "blobId": "../../../../secret"}), "blobId"),
            (serde_json::json!({"rfilename": "a", "size": 6, "blobId": SHA}), "blobId"),
            (
                serde_json::json!({"rfilename": "a", "size": 6,
                "lfs": {"sha256": "../../../../secret", "size": 6}}),
                "lfs.sha256",
            ),
            (serde_json::json!({"rfilename": "a", "size": 6, "lfs": {"sha256": BLOB}}), "lfs.sha256"),
            (serde_json::json!({"rfilename": "a", "size": 6, "lfs": {"sha256": SHA, "size": 7}}), "two sizes"),
            (serde_json::json!({"rfilename": "a", "blobId": BLOB}), "no size"),
            (serde_json::json!({"rfilename": "a", "size": 6}), "no blobId"),
        ] {
            let err = file(sib.clone()).err().unwrap_or_else(|| panic!("{sib} accepted")).to_string();
            assert!(err.contains(says), "{sib}: {err}");
        }
        let l = listing(COMMIT, serde_json::json!({"rfilename": "a", "size": 1, "blobId": BLOB})).unwrap();
        assert!(l.has("a") && !l.has("b"));
        assert!(l.file("b").is_err());
    }
}
