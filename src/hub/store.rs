//! The hub cache on disk, in `huggingface_hub`'s layout so that Python tools
//! read what webqwen downloaded (and the other way round):
//!
//! ```text
//! <cache>/models--<owner>--<name>/blobs/<sha256 or git blob id>   the bytes
//!                                /snapshots/<commit>/<file>        -> ../../blobs/<hash>
//!                                /refs/<revision>                  the commit
//! <cache>/.locks/models--<owner>--<name>/<hash>.lock               one download at a time
//! ```
//!
//! Only checked names are joined into paths: hashes and commits come from
//! [`super::listing`], revisions from `parse_repo_spec`. A blob is trusted
//! only once its bytes hash to its name; see [`RepoCache::blob_ok`].

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::listing::{is_commit, shown, Digest, Hasher};

pub(crate) struct RepoCache {
    /// `<cache>/models--<owner>--<name>`
    dir: PathBuf,
    /// `<cache>/.locks/models--<owner>--<name>`
    locks: PathBuf,
}

/// Whether notes (a damaged blob, a wait for another process) go to stderr.
pub(crate) type Report = bool;

impl RepoCache {
    /// `repo_id` is a checked `owner/name`.
    pub(crate) fn new(cache: &Path, repo_id: &str) -> RepoCache {
        let folder = format!("models--{}", repo_id.replace('/', "--"));
        RepoCache { dir: cache.join(&folder), locks: cache.join(".locks").join(folder) }
    }

    /// `commit` is checked by the caller ([`is_commit`]).
    pub(crate) fn snapshot(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    pub(crate) fn blob(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join(digest.hex())
    }

    /// Where a blob is downloaded to before it is checked (kept across runs to resume).
    pub(crate) fn partial(&self, digest: &Digest) -> Result<PathBuf> {
        let blobs = self.dir.join("blobs");
        fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        Ok(blobs.join(format!("{}.incomplete", digest.hex())))
    }

    /// Holds the lock of one blob (the file `huggingface_hub` locks too) until
    /// dropped; waits while another process holds it. `None` where the file
    /// system has no locks: the hash check still keeps a clash out of the cache.
    pub(crate) fn lock(&self, digest: &Digest, name: &str, report: Report) -> Result<Option<File>> {
        fs::create_dir_all(&self.locks).with_context(|| format!("creating {}", self.locks.display()))?;
        let path = self.locks.join(format!("{}.lock", digest.hex()));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => Ok(Some(file)),
            Err(fs4::TryLockError::WouldBlock) => {
                if report {
                    eprintln!(
                        "note: another process is downloading {name} into the cache; waiting for \
                         it (lock {})",
                        path.display()
                    );
                }
                fs4::FileExt::lock(&file).with_context(|| format!("waiting for the lock {}", path.display()))?;
                Ok(Some(file))
            }
            Err(fs4::TryLockError::Error(e)) => {
                log::warn!("cannot lock {} ({e}); downloading without a lock", path.display());
                Ok(None)
            }
        }
    }

    /// Whether `blobs/<hash>` holds exactly the bytes its name (`digest`)
    /// stands for, and `size` of them where known. A blob that does not is
    /// removed (and `false` returned), so it is downloaded anew.
    ///
    /// Hashing gigabytes on every run would cost seconds, so a check that
    /// passed leaves a stamp, `blobs/<hash>.verified`, recording the blob's
    /// identity: length, modification time and, on unix, inode change time,
    /// inode and device. While the blob's identity equals its stamp, and the
    /// stamp was written after the blob last changed, the blob is trusted
    /// without hashing. Any write to the blob changes its change time (which,
    /// unlike the modification time, cannot be set back); a write within the
    /// same clock tick as the stamp leaves the stamp no newer than the change,
    /// so either way the next run hashes the blob again. A blob another tool
    /// downloaded has no stamp and is hashed once. This guards against damaged
    /// and half-written files and bytes of unknown origin, not against someone
    /// who writes the cache on purpose: they could write the stamp too.
    pub(crate) fn blob_ok(&self, digest: &Digest, size: Option<u64>, name: &str, report: Report) -> Result<bool> {
        let blob = self.blob(digest);
        let meta = match fs::symlink_metadata(&blob) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("reading {}", blob.display())),
        };
        let stamped = stamp_valid(&blob, &meta);
        let matches = meta.is_file()
            && size.is_none_or(|size| size == meta.len())
            && (stamped
                || hash_file(&blob, digest, meta.len()).with_context(|| format!("reading {}", blob.display()))?
                    == digest.hex());
        if matches {
            if !stamped {
                write_stamp(&blob);
            }
            return Ok(true);
        }
        let stamp = stamp_path(&blob);
        if report {
            eprintln!("note: the cached {name} ({}) does not match its {}; removing it", blob.display(), digest.kind());
        }
        let _ = fs::remove_file(&stamp);
        if meta.is_dir() {
            bail!("{} is a directory, not a blob; remove it and run again", blob.display());
        }
        fs::remove_file(&blob).with_context(|| format!("removing the damaged {}", blob.display()))?;
        Ok(false)
    }

    /// Moves a downloaded and checked file into place as `blobs/<hash>`.
    pub(crate) fn store(&self, partial: &Path, digest: &Digest) -> Result<()> {
        let blob = self.blob(digest);
        fs::rename(partial, &blob).with_context(|| format!("moving {} to {}", partial.display(), blob.display()))?;
        write_stamp(&blob);
        Ok(())
    }

    /// Whether `snapshots/<commit>/<name>` is already the link to the blob `digest`.
    pub(crate) fn linked(&self, commit: &str, name: &str, digest: &Digest) -> bool {
        let dest = self.snapshot(commit).join(name);
        #[cfg(unix)]
        {
            fs::read_link(&dest).is_ok_and(|target| target == Path::new(&link_target(name, digest)))
        }
        #[cfg(not(unix))]
        {
            // A hard link or copy: same length and modification time as the blob.
            let stamp = |p: &Path| fs::metadata(p).ok().map(|m| (m.is_file(), m.len(), m.modified().ok()));
            stamp(&dest).is_some_and(|s| s.0 && Some(s) == stamp(&self.blob(digest)))
        }
    }

    /// Makes `snapshots/<commit>/<name>` the blob `digest`: a relative symlink
    /// on unix, as `huggingface_hub` makes it; a hard link (else a copy) elsewhere.
    pub(crate) fn link(&self, commit: &str, name: &str, digest: &Digest) -> Result<()> {
        if self.linked(commit, name, digest) {
            return Ok(());
        }
        let dest = self.snapshot(commit).join(name);
        let dir = dest.parent().unwrap_or(&self.dir);
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Made beside the blob, where a leftover would not look like a file of
        // the snapshot; the link's text is read relative to where it ends up.
        let tmp = self.dir.join("blobs").join(format!("{}.webqwen-{}.link", digest.hex(), std::process::id()));
        let _ = fs::remove_file(&tmp);
        #[cfg(unix)]
        let made = std::os::unix::fs::symlink(link_target(name, digest), &tmp);
        #[cfg(not(unix))]
        let made = fs::hard_link(self.blob(digest), &tmp).or_else(|_| fs::copy(self.blob(digest), &tmp).map(|_| ()));
        made.and_then(|()| fs::rename(&tmp, &dest)).with_context(|| format!("linking {} to its blob", dest.display()))
    }

    /// Records that `revision` (a checked branch or tag name) is at `commit`.
    pub(crate) fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        let path = self.dir.join("refs").join(revision);
        let dir = path.parent().unwrap_or(&self.dir);
        // Not in refs/, where a leftover would read as a branch.
        let tmp = self.dir.join(format!("ref.webqwen-{}.tmp", std::process::id()));
        fs::create_dir_all(dir)
            .and_then(|()| fs::write(&tmp, commit))
            .and_then(|()| fs::rename(&tmp, &path))
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The commit `revision` stands for in the cache: itself if it is a
    /// commit id, else what `refs/<revision>` holds (checked).
    pub(crate) fn commit_of(&self, revision: &str) -> Result<String> {
        if is_commit(revision) {
            return Ok(revision.to_string());
        }
        let path = self.dir.join("refs").join(revision);
        let text = fs::read_to_string(&path)
            .with_context(|| format!("nothing cached for revision {revision} (no {})", path.display()))?;
        let commit = text.trim();
        if !is_commit(commit) {
            bail!(
                "{} holds {}, not a commit id; delete it and run again with the hub reachable",
                path.display(),
                shown(commit)
            );
        }
        Ok(commit.to_string())
    }

    /// Checks `snapshots/<commit>/<name>` without the hub's listing: a link
    /// must lead to `blobs/<hash>` of this repo, and the blob must hash to its
    /// name. A plain file (no link; Python on Windows makes those) cannot be
    /// checked without the listing and is taken as it is.
    pub(crate) fn check_cached(&self, commit: &str, name: &str, report: Report) -> Result<()> {
        let path = self.snapshot(commit).join(name);
        let meta = fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        if !meta.is_symlink() {
            return Ok(());
        }
        let target = fs::read_link(&path).with_context(|| format!("reading {}", path.display()))?;
        // `../../blobs/<hash>`, or `<this repo>/blobs/<hash>` (older huggingface_hub).
        let blob_name = if target.is_absolute() {
            (target.parent() == Some(&self.dir.join("blobs")))
                .then(|| target.file_name().and_then(|n| n.to_str()))
                .flatten()
        } else {
            let prefix = link_target(name, &Digest::GitBlob(String::new()));
            target.to_str().and_then(|t| t.strip_prefix(&prefix))
        };
        let digest = blob_name.and_then(Digest::from_blob_name);
        let Some(digest) = digest else {
            bail!(
                "{} links to {}, not to a blob of this repo in the cache; delete {} and run again \
                 with the hub reachable",
                path.display(),
                target.display(),
                self.snapshot(commit).display()
            );
        };
        if !self.blob_ok(&digest, None, name, report)? {
            bail!(
                "the cached {name} ({}) is missing or damaged; run again with the hub reachable \
                 to download it anew",
                self.blob(&digest).display()
            );
        }
        Ok(())
    }
}

/// `../../blobs/<hash>` from `snapshots/<commit>/<name>`, one more `../` per
/// directory in `name`.
fn link_target(name: &str, digest: &Digest) -> String {
    format!("{}blobs/{}", "../".repeat(name.split('/').count() + 1), digest.hex())
}

fn stamp_path(blob: &Path) -> PathBuf {
    let mut name = blob.file_name().unwrap_or_default().to_os_string();
    name.push(".verified");
    blob.with_file_name(name)
}

/// Whether the blob's stamp records `meta` and is newer than the blob's last change.
fn stamp_valid(blob: &Path, meta: &fs::Metadata) -> bool {
    let stamp = stamp_path(blob);
    fs::read_to_string(&stamp).is_ok_and(|text| text == identity(meta))
        && fs::metadata(&stamp).is_ok_and(|stamp| changed_at(&stamp, false) > changed_at(meta, true))
}

/// Stamps a blob just checked (see [`RepoCache::blob_ok`]), waiting out the
/// clock tick of its last change so that the stamp is newer. Without a stamp
/// the blob is only hashed again next time.
fn write_stamp(blob: &Path) {
    let stamp = stamp_path(blob);
    for _ in 0..100 {
        let Ok(meta) = fs::metadata(blob) else { break };
        if fs::write(&stamp, identity(&meta)).is_err() {
            return;
        }
        if stamp_valid(blob, &meta) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = fs::remove_file(&stamp);
}

/// When a file last changed: its inode change time on unix (`ctime`, if
/// `change`), else its modification time; as (seconds, nanoseconds).
fn changed_at(meta: &fs::Metadata, change: bool) -> (i64, i64) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if change {
            (meta.ctime(), meta.ctime_nsec())
        } else {
            (meta.mtime(), meta.mtime_nsec())
        }
    }
    #[cfg(not(unix))]
    {
        let _ = change;
        let since = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
        (since.as_secs() as i64, i64::from(since.subsec_nanos()))
    }
}

/// What changes when a file is written (see [`RepoCache::blob_ok`]).
fn identity(meta: &fs::Metadata) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        format!(
            "webqwen blob check 1: len {} mtime {}.{:09} ctime {}.{:09} ino {} dev {}\n",
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
            meta.ino(),
            meta.dev()
        )
    }
    #[cfg(not(unix))]
    {
        let mtime =
            meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        format!("webqwen blob check 1: len {} mtime {mtime}\n", meta.len())
    }
}

/// The hex digest of a file's bytes, of the same kind as `digest`.
pub(crate) fn hash_file(path: &Path, digest: &Digest, len: u64) -> std::io::Result<String> {
    let mut hasher = Hasher::new(digest, len);
    hash_prefix(&mut File::open(path)?, &mut hasher, u64::MAX)?;
    Ok(hasher.finish())
}

/// Feeds up to `limit` bytes of `reader` to `hasher`; returns how many there were.
pub(crate) fn hash_prefix(reader: &mut impl Read, hasher: &mut Hasher, limit: u64) -> std::io::Result<u64> {
    let mut reader = reader.take(limit);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
    // sha256 and git blob id of "hello\n"
    const SHA: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
    const BLOB: &str = "ce013625030ba8dba906f756967f9e9ca394464a";

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("webqwen-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn link_targets_stay_in_the_repo() {
        let d = Digest::Sha256(SHA.into());
        assert_eq!(link_target("config.json", &d), format!("../../blobs/{SHA}"));
        assert_eq!(link_target("a/b/c.json", &d), format!("../../../../blobs/{SHA}"));
    }

    #[test]
    fn blobs_are_trusted_only_when_they_hash_to_their_name() {
        let root = scratch("blobs");
        let cache = RepoCache::new(&root, "o/n");
        for digest in [Digest::Sha256(SHA.into()), Digest::GitBlob(BLOB.into())] {
            let blob = cache.blob(&digest);
            assert!(!cache.blob_ok(&digest, None, "f", false).unwrap());
            let partial = cache.partial(&digest).unwrap();
            fs::write(&partial, b"hello\n").unwrap();
            cache.store(&partial, &digest).unwrap();
            assert!(cache.blob_ok(&digest, Some(6), "f", false).unwrap());
            assert!(stamp_path(&blob).is_file());
            assert!(!cache.blob_ok(&digest, Some(7), "f", false).unwrap(), "wrong size accepted");
            assert!(!blob.exists(), "a blob of the wrong size is removed");

            // Same length, one byte changed, stamp left behind: hashed again and removed.
            fs::write(&blob, b"hello\n").unwrap();
            assert!(cache.blob_ok(&digest, Some(6), "f", false).unwrap());
            fs::write(&blob, b"jello\n").unwrap();
            assert!(!cache.blob_ok(&digest, Some(6), "f", false).unwrap(), "damaged blob accepted");
            assert!(!blob.exists() && !stamp_path(&blob).exists());
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn snapshot_links_are_checked() {
        let root = scratch("links");
        let cache = RepoCache::new(&root, "o/n");
        let digest = Digest::Sha256(SHA.into());
        let partial = cache.partial(&digest).unwrap();
        fs::write(&partial, b"hello\n").unwrap();
        cache.store(&partial, &digest).unwrap();
        cache.link(COMMIT, "sub/f.json", &digest).unwrap();
        assert!(cache.linked(COMMIT, "sub/f.json", &digest));
        let linked = cache.snapshot(COMMIT).join("sub/f.json");
        assert_eq!(fs::read(&linked).unwrap(), b"hello\n");
        cache.check_cached(COMMIT, "sub/f.json", false).unwrap();

        // An absolute link into this repo's blobs is fine (older huggingface_hub made those).
        let absolute = cache.snapshot(COMMIT).join("abs.json");
        std::os::unix::fs::symlink(cache.blob(&digest), &absolute).unwrap();
        cache.check_cached(COMMIT, "abs.json", false).unwrap();

        // A link out of the blobs is refused, whatever it points at.
        fs::write(root.join("secret"), b"x").unwrap();
        for (name, target) in [
            ("evil.json", "../../../secret".into()),
            ("evil2.json", "../../blobs/../../secret".into()),
            ("evil3.json", root.join("secret").display().to_string()),
            ("evil4.json", format!("../../../models--o--m/blobs/{SHA}")),
        ] {
            let evil = cache.snapshot(COMMIT).join(name);
            std::os::unix::fs::symlink(target, &evil).unwrap();
            let err = cache.check_cached(COMMIT, name, false).unwrap_err();
            assert!(err.to_string().contains("not to a blob"), "{err}");
        }

        // A damaged blob is found offline too.
        fs::write(cache.blob(&digest), b"jello\n").unwrap();
        let err = cache.check_cached(COMMIT, "sub/f.json", false).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refs_must_name_a_commit() {
        let root = scratch("refs");
        let cache = RepoCache::new(&root, "o/n");
        assert_eq!(cache.commit_of(COMMIT).unwrap(), COMMIT);
        assert!(cache.commit_of("main").is_err());
        cache.write_ref("main", COMMIT).unwrap();
        assert_eq!(cache.commit_of("main").unwrap(), COMMIT);
        fs::write(root.join("models--o--n/refs/main"), "../../../../x").unwrap();
        let err = cache.commit_of("main").unwrap_err();
        assert!(err.to_string().contains("not a commit id"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }
}
