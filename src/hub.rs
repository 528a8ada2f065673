//! `--model` resolution: a local directory, or a Hugging Face repo id that is
//! fetched into the standard hub cache (the one the Python tools use too).
//!
//! Environment, as in `huggingface_hub`: `HF_ENDPOINT` (mirror or mock hub),
//! `HF_TOKEN` (else the token file `$HF_HOME/token`), `HF_HUB_CACHE`, `HF_HOME`,
//! `XDG_CACHE_HOME` (cache location), `HF_HUB_OFFLINE=1` (cache only, no network).
//!
//! Nothing the hub sends chooses a path: commit ids, hashes and file names are
//! checked before they are joined into cache paths ([`listing`]), and every
//! file is hashed while it downloads and stored only if it matches the listing
//! ([`http`]). Files already in the cache are trusted only when they hash to
//! their blob's name ([`store`]).

mod http;
mod listing;
mod store;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use listing::{is_plain_file_name, RemoteFile};
use store::RepoCache;

use crate::files::{CONFIG, OPTIONAL, REQUIRED, SINGLE_WEIGHTS as SINGLE_FILE, WEIGHTS_INDEX as INDEX};
use crate::weights::ShardIndex;

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Turns `--model` into a local directory holding config.json, the tokenizer
/// files and the safetensors weights.
///
/// `spec` is an existing directory, or a hub repo id `owner/name` or
/// `owner/name@revision` (branch, tag or commit). A repo is downloaded on first
/// use into `<hub cache>/models--owner--name/snapshots/<commit>/` and reused
/// from there afterwards, also when the hub cannot be reached.
/// `progress` shows a progress bar per downloaded file and notes (a damaged
/// cached file, a retried download) on stderr.
pub fn resolve_model(spec: &str, progress: bool) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        if !path.join(CONFIG).is_file() {
            bail!(
                "model directory {} has no {CONFIG}; expected a Qwen3 model in the MLX layout ({}, *.safetensors)",
                path.display(),
                REQUIRED.join(", ")
            );
        }
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        bail!("--model {spec}: this is a file; give a model directory or a hub repo id (owner/name)");
    }
    let Some((repo_id, revision)) = parse_repo_spec(spec) else {
        bail!(
            "--model {spec:?} is neither an existing directory nor a Hugging Face repo id \
             (owner/name or owner/name@revision)"
        );
    };
    Hub::from_env()?.fetch(repo_id, revision, progress)
}

/// `owner/name[@revision]` with hub-legal names, or None.
fn parse_repo_spec(spec: &str) -> Option<(&str, &str)> {
    let (id, revision) = spec.split_once('@').unwrap_or((spec, "main"));
    // The revision becomes a path under refs/ (branches like refs/pr/1 included).
    if !is_plain_file_name(revision) {
        return None;
    }
    let (owner, name) = id.split_once('/')?;
    let legal = |s: &str| {
        !s.is_empty() && !s.starts_with('.') && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    (legal(owner) && legal(name)).then_some((id, revision))
}

/// Where and how to talk to the hub, read from the environment.
struct Hub {
    cache: PathBuf,
    endpoint: String,
    token: Option<String>,
    offline: bool,
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

impl Hub {
    fn from_env() -> Result<Self> {
        // Same precedence as huggingface_hub.
        let hf_home = match env("HF_HOME") {
            Some(dir) => PathBuf::from(dir),
            None => match env("XDG_CACHE_HOME") {
                Some(dir) => PathBuf::from(dir).join("huggingface"),
                None => env("HOME")
                    .or_else(|| env("USERPROFILE"))
                    .map(|home| PathBuf::from(home).join(".cache").join("huggingface"))
                    .context("cannot locate the Hugging Face cache: set HF_HOME (or HOME)")?,
            },
        };
        let cache = env("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| hf_home.join("hub"));
        let cache = std::path::absolute(&cache).unwrap_or(cache);
        let token = env("HF_TOKEN").or_else(|| env("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
            let token = std::fs::read_to_string(hf_home.join("token")).ok()?;
            Some(token.trim().to_string()).filter(|t| !t.is_empty())
        });
        let endpoint = env("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        let offline = env("HF_HUB_OFFLINE")
            .is_some_and(|v| ["1", "on", "yes", "true"].contains(&v.trim().to_ascii_lowercase().as_str()));
        Ok(Hub { cache, endpoint: endpoint.trim_end_matches('/').to_string(), token, offline })
    }

    fn fetch(&self, repo_id: &str, revision: &str, progress: bool) -> Result<PathBuf> {
        let cache = RepoCache::new(&self.cache, repo_id);
        let spec = if revision == "main" { repo_id.to_string() } else { format!("{repo_id}@{revision}") };
        if self.offline {
            return cached_snapshot(&cache, revision, progress)
                .with_context(|| format!("HF_HUB_OFFLINE is set and {spec} is not fully in the cache"));
        }
        let client = http::Client::new(&self.endpoint, self.token.clone())?;
        let endpoint = client.endpoint();

        // One metadata call gives the commit, the file list and every file's
        // size and hash, so optional files are only asked for when they exist
        // and a cached commit needs no further requests at all.
        let listing = match client.listing(repo_id, revision, &spec)? {
            Ok(listing) => listing,
            Err(network_error) => {
                // Hub unreachable: a complete cached copy is as good.
                let err = format!(
                    "cannot reach the Hugging Face hub at {endpoint} (HF_ENDPOINT): {network_error}; \
                     check the network, point HF_ENDPOINT at a reachable hub or mirror, or set \
                     HF_HUB_OFFLINE=1 to use only the local cache"
                );
                return cached_snapshot(&cache, revision, progress)
                    .map_err(|cache_err| anyhow!("{err}. {spec} is not usable from the cache either: {cache_err:#}"));
            }
        };
        let commit = listing.commit.as_str();
        if listing::is_commit(revision) && revision != commit {
            bail!("{endpoint} answered for commit {commit} when asked for {revision}; refusing it");
        }
        let missing: Vec<&str> = REQUIRED.into_iter().filter(|f| !listing.has(f)).collect();
        if !missing.is_empty() {
            bail!(
                "{spec} has no {} at commit {commit}; webqwen needs a Qwen3 model in the MLX layout",
                missing.join(", ")
            );
        }
        // The listing was checked as a whole before anything touches the disk.
        let mut wanted: Vec<&RemoteFile> = REQUIRED
            .iter()
            .chain(OPTIONAL.iter())
            .filter(|f| listing.has(f))
            .map(|f| listing.file(f))
            .collect::<Result<_>>()?;
        if listing.has(INDEX) {
            // Index first: it names the shards.
            let index = listing.file(INDEX)?;
            self.fetch_file(&client, &cache, repo_id, commit, index, progress)?;
            for shard in shards(&cache.snapshot(commit).join(INDEX))? {
                if !listing.has(&shard) {
                    bail!("{spec}: {INDEX} lists {shard}, which the repo does not have");
                }
                wanted.push(listing.file(&shard)?);
            }
        } else if listing.has(SINGLE_FILE) {
            wanted.push(listing.file(SINGLE_FILE)?);
        } else {
            bail!("{spec} has neither {SINGLE_FILE} nor {INDEX}; no safetensors weights to load");
        }
        for file in wanted {
            self.fetch_file(&client, &cache, repo_id, commit, file, progress)?;
        }
        // What huggingface_hub does: refs/<branch> names the commit, so offline
        // runs (ours and Python's) find this snapshot.
        if revision != commit {
            cache.write_ref(revision, commit)?;
        }
        Ok(cache.snapshot(commit))
    }

    /// Makes `snapshots/<commit>/<file>` the checked bytes of `file`: from the
    /// blob an earlier run or an older commit left in the cache if it still
    /// matches, else downloaded.
    fn fetch_file(
        &self,
        client: &http::Client,
        cache: &RepoCache,
        repo_id: &str,
        commit: &str,
        file: &RemoteFile,
        progress: bool,
    ) -> Result<()> {
        let (name, digest, size) = (&file.name, &file.digest, Some(file.size));
        if cache.linked(commit, name, digest) && cache.blob_ok(digest, size, name, progress)? {
            return Ok(()); // this commit already has it
        }
        let _lock = cache.lock(digest, name, progress)?;
        if !cache.blob_ok(digest, size, name, progress)? {
            let url = client.resolve_url(repo_id, commit, name);
            let partial = cache.partial(digest)?;
            client.download(&url, file, commit, &partial, progress)?;
            cache.store(&partial, digest)?;
        }
        cache.link(commit, name, digest)
    }
}

/// The shard files named by an index's weight_map, each once: plain `*.safetensors` names
/// (`ShardIndex::parse`, as the loader reads it), so they stay inside the cache.
fn shards(index: &Path) -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let index_json =
        ShardIndex::parse(&text).map_err(|m| anyhow!("{} names an invalid shard file: {m}", index.display()))?;
    Ok(index_json.files().into_iter().collect())
}

/// The snapshot `revision` points to in the cache, if it holds a whole model
/// whose files still match their blobs' hashes.
fn cached_snapshot(cache: &RepoCache, revision: &str, progress: bool) -> Result<PathBuf> {
    let commit = cache.commit_of(revision)?;
    let dir = cache.snapshot(&commit);
    let present = |name: &str| dir.join(name).is_file();
    let mut missing: Vec<String> = REQUIRED.iter().filter(|f| !present(f)).map(|f| f.to_string()).collect();
    let mut names: Vec<String> =
        REQUIRED.iter().chain(OPTIONAL.iter()).filter(|f| present(f)).map(|f| f.to_string()).collect();
    if present(INDEX) {
        cache.check_cached(&commit, INDEX, progress)?;
        let shards = shards(&dir.join(INDEX))?;
        missing.extend(shards.iter().filter(|s| !present(s)).cloned());
        names.extend(shards);
    } else if present(SINGLE_FILE) {
        names.push(SINGLE_FILE.into());
    } else {
        missing.push(format!("{SINGLE_FILE} (or {INDEX})"));
    }
    if !missing.is_empty() {
        bail!("{} lacks {}", dir.display(), missing.join(", "));
    }
    for name in &names {
        cache.check_cached(&commit, name, progress)?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_specs() {
        assert_eq!(parse_repo_spec("mlx-community/Qwen3-0.6B-4bit"), Some(("mlx-community/Qwen3-0.6B-4bit", "main")));
        assert_eq!(parse_repo_spec("Qwen/Qwen3-8B-MLX-4bit@v1.0"), Some(("Qwen/Qwen3-8B-MLX-4bit", "v1.0")));
        assert_eq!(parse_repo_spec("a/b@refs/pr/1"), Some(("a/b", "refs/pr/1")));
        for bad in
            ["qwen3", "a/b/c", "./a", "../a/b", "/abs/path", "a/", "/b", "a/b@", "a/b@../../x", "a b/c", "C:\\m\\x"]
        {
            assert_eq!(parse_repo_spec(bad), None, "{bad}");
        }
    }
}
