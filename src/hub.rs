//! `--model` resolution: a local directory, or a Hugging Face repo id that is
//! fetched into the standard hub cache (the one the Python tools use too).
//!
//! Environment, as in `huggingface_hub`: `HF_ENDPOINT` (mirror or mock hub),
//! `HF_TOKEN` (else the token file `$HF_HOME/token`), `HF_HUB_CACHE`, `HF_HOME`,
//! `XDG_CACHE_HOME` (cache location), `HF_HUB_OFFLINE=1` (cache only, no network).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;

const REQUIRED: [&str; 3] = ["config.json", "tokenizer.json", "tokenizer_config.json"];
const OPTIONAL: [&str; 3] = ["generation_config.json", "chat_template.jinja", INDEX];
const INDEX: &str = "model.safetensors.index.json";
const SINGLE_FILE: &str = "model.safetensors";
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Turns `--model` into a local directory holding config.json, the tokenizer
/// files and the safetensors weights.
///
/// `spec` is an existing directory, or a hub repo id `owner/name` or
/// `owner/name@revision` (branch, tag or commit). A repo is downloaded on first
/// use into `<hub cache>/models--owner--name/snapshots/<commit>/` and reused
/// from there afterwards, also when the hub cannot be reached.
/// `progress` shows a progress bar per downloaded file (on stderr).
pub fn resolve_model(spec: &str, progress: bool) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            bail!(
                "model directory {} has no config.json; expected a Qwen3 model in the MLX \
                 layout (config.json, tokenizer.json, tokenizer_config.json, *.safetensors)",
                path.display()
            );
        }
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        bail!(
            "--model {spec}: this is a file; give a model directory or a hub repo id (owner/name)"
        );
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
    let safe_revision = !revision.is_empty()
        && !revision.contains('\\')
        && Path::new(revision)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if !safe_revision {
        return None;
    }
    let (owner, name) = id.split_once('/')?;
    let legal = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
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
        // Same precedence as huggingface_hub. We compute it ourselves because
        // hf-hub 0.4 only knows HF_HOME and panics when there is no home dir.
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
        let cache = env("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        // Absolute, so the relative symlinks hf-hub makes inside the cache are right.
        let cache = std::path::absolute(&cache).unwrap_or(cache);
        let token = env("HF_TOKEN")
            .or_else(|| env("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let token = std::fs::read_to_string(hf_home.join("token")).ok()?;
                Some(token.trim().to_string()).filter(|t| !t.is_empty())
            });
        let endpoint = env("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        let offline = env("HF_HUB_OFFLINE").is_some_and(|v| {
            ["1", "on", "yes", "true"].contains(&v.trim().to_ascii_lowercase().as_str())
        });
        Ok(Hub {
            cache,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
            offline,
        })
    }

    fn fetch(&self, repo_id: &str, revision: &str, progress: bool) -> Result<PathBuf> {
        let repo = Repo::with_revision(repo_id.into(), RepoType::Model, revision.into());
        let repo_dir = self.cache.join(repo.folder_name());
        let spec = if revision == "main" {
            repo_id.to_string()
        } else {
            format!("{repo_id}@{revision}")
        };
        if self.offline {
            return cached_snapshot(&repo_dir, revision).with_context(|| {
                format!("HF_HUB_OFFLINE is set and {spec} is not fully in the cache")
            });
        }
        let api = ApiBuilder::from_cache(Cache::new(self.cache.clone()))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(progress)
            .with_retries(3) // resumes an interrupted download where it stopped
            .build()
            .context("setting up the Hugging Face hub client")?;
        let api_repo = api.repo(repo);

        // One metadata call gives the commit and the file list, so optional
        // files are only asked for when they exist and a cached commit needs
        // no further requests at all.
        let info = match self.repo_info(&api_repo, repo_id, &spec)? {
            Ok(info) => info,
            Err(network_error) => {
                // Hub unreachable: a complete cached copy is as good.
                let err = format!(
                    "cannot reach the Hugging Face hub at {} (HF_ENDPOINT): {network_error}; check \
                     the network, point HF_ENDPOINT at a reachable hub or mirror, or set \
                     HF_HUB_OFFLINE=1 to use only the local cache",
                    self.endpoint
                );
                return cached_snapshot(&repo_dir, revision).map_err(|cache_err| {
                    anyhow!("{err}. {spec} is not usable from the cache either: {cache_err:#}")
                });
            }
        };
        let snapshot = repo_dir.join("snapshots").join(&info.sha);
        let files: HashMap<&str, &Sibling> = info
            .siblings
            .iter()
            .map(|s| (s.rfilename.as_str(), s))
            .collect();
        let missing: Vec<&str> = REQUIRED
            .into_iter()
            .filter(|f| !files.contains_key(f))
            .collect();
        if !missing.is_empty() {
            bail!(
                "{spec} has no {} at commit {}; webqwen needs a Qwen3 model in the MLX layout",
                missing.join(", "),
                info.sha
            );
        }
        let mut wanted: Vec<String> = REQUIRED
            .iter()
            .chain(OPTIONAL.iter())
            .filter(|f| files.contains_key(*f))
            .map(|f| f.to_string())
            .collect();
        if files.contains_key(INDEX) {
            // Index first: it names the shards.
            self.fetch_file(&api_repo, &repo_dir, &snapshot, files[INDEX])?;
            wanted.extend(shards(&snapshot.join(INDEX))?);
        } else if files.contains_key(SINGLE_FILE) {
            wanted.push(SINGLE_FILE.into());
        } else {
            bail!("{spec} has neither {SINGLE_FILE} nor {INDEX}; no safetensors weights to load");
        }
        for name in &wanted {
            let sibling = files.get(name.as_str()).with_context(|| {
                format!("{spec}: {INDEX} lists {name}, which the repo does not have")
            })?;
            self.fetch_file(&api_repo, &repo_dir, &snapshot, sibling)?;
        }
        // What huggingface_hub does: refs/<branch> names the commit, so offline
        // runs (ours and Python's) find this snapshot.
        if revision != info.sha {
            let refs = repo_dir.join("refs").join(revision);
            std::fs::create_dir_all(refs.parent().unwrap_or(&repo_dir))
                .and_then(|()| std::fs::write(&refs, &info.sha))
                .with_context(|| format!("writing {}", refs.display()))?;
        }
        complete_snapshot(&snapshot)
    }

    /// The inner `Err` is a network failure (no answer at all), where a cached
    /// copy can stand in; an answer like 404 is the outer error.
    fn repo_info(
        &self,
        api_repo: &ApiRepo,
        repo_id: &str,
        spec: &str,
    ) -> Result<Result<RepoInfo, String>> {
        let response = match api_repo.info_request().query("blobs", "true").call() {
            Ok(response) => response,
            Err(err) => {
                let message = err.to_string();
                let Some(response) = err.into_response() else {
                    return Ok(Err(message));
                };
                let code = response
                    .header("x-error-code")
                    .unwrap_or_default()
                    .to_string();
                return Err(match (response.status(), code.as_str()) {
                    (_, "RevisionNotFound") => anyhow!("{spec}: no such revision on {} ({message})", self.endpoint),
                    // The hub answers 401 rather than 404 for unknown repos when no token is sent.
                    (401 | 404, _) => anyhow!(
                        "{spec} is not a local directory, and {} has no model repo {repo_id} ({message}); \
                         check the name, or set HF_TOKEN if the repo is private",
                        self.endpoint
                    ),
                    (403, _) => anyhow!("access to {spec} denied ({message}); for a gated repo accept its terms on the hub and set HF_TOKEN"),
                    // Hub down or overloaded: as good as unreachable, the cache may help.
                    (500.., _) => return Ok(Err(message)),
                    (status, _) => anyhow!("the hub at {} answered {status} for {spec} ({message})", self.endpoint),
                });
            }
        };
        let info: RepoInfo = response
            .into_json()
            .with_context(|| format!("{} sent unexpected metadata for {spec}", self.endpoint))?;
        Ok(Ok(info))
    }

    fn fetch_file(
        &self,
        api_repo: &ApiRepo,
        repo_dir: &Path,
        snapshot: &Path,
        file: &Sibling,
    ) -> Result<()> {
        let name = file.rfilename.as_str();
        let dest = snapshot.join(name);
        if dest.is_file() {
            return Ok(()); // this commit already has it
        }
        if dest.symlink_metadata().is_ok() {
            // A link to a deleted blob: hf-hub would fail to replace it.
            std::fs::remove_file(&dest).with_context(|| format!("removing {}", dest.display()))?;
        }
        if link_cached_blob(repo_dir, &dest, name, file) {
            return Ok(()); // an older commit had the same bytes
        }
        let fetched =
            guarded(|| api_repo.download(name)).map_err(|e| self.explain(e, api_repo, name))?;
        if fetched != dest {
            bail!("the repo changed on the hub while downloading ({name}); run again");
        }
        Ok(())
    }

    fn explain(&self, err: ApiError, api_repo: &ApiRepo, name: &str) -> anyhow::Error {
        let url = api_repo.url(name);
        match err {
            ApiError::RequestError(err) => {
                let message = err.to_string();
                match err.into_response().map(|r| r.status()) {
                    None => anyhow!(
                        "downloading {url} failed: {message}; check the network, or point HF_ENDPOINT \
                         at a reachable hub or mirror (now {})",
                        self.endpoint
                    ),
                    Some(401 | 403) => anyhow!("access to {url} denied ({message}); set HF_TOKEN (gated or private repo)"),
                    Some(status) => anyhow!("downloading {url} failed with HTTP {status} ({message})"),
                }
            }
            // E.g. mirrors that ignore Range requests for small files (hf-hub 0.4 needs the answer's Content-Range).
            ApiError::MissingHeader(header) => anyhow!(
                "{} does not answer like the Hugging Face hub: no {header} header for {url}; \
                 check HF_ENDPOINT",
                self.endpoint
            ),
            ApiError::LockAcquisition(lock) => anyhow!(
                "another process is downloading into the cache ({}); wait for it, or delete that \
                 lock file if no download is running",
                lock.display()
            ),
            other => anyhow!(other).context(format!("downloading {url}")),
        }
    }
}

/// hf-hub has a few `unwrap`s on unexpected server answers; a bad mirror
/// should give an error, not a crash.
fn guarded<T>(f: impl FnOnce() -> Result<T, ApiError>) -> Result<T, ApiError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = (panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unexpected answer".into());
        Err(ApiError::IoError(std::io::Error::other(format!(
            "hub client failed: {what}"
        ))))
    })
}

#[derive(Deserialize)]
struct RepoInfo {
    sha: String,
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    sha256: String,
}

/// A new commit that leaves a file unchanged (e.g. a README edit) must not
/// re-download gigabytes: blobs are named by their etag (sha256 for LFS files,
/// git blob id otherwise), so an existing blob is linked into the new snapshot,
/// the way huggingface_hub does it.
#[cfg(unix)]
fn link_cached_blob(repo_dir: &Path, dest: &Path, name: &str, file: &Sibling) -> bool {
    let Some(etag) = file
        .lfs
        .as_ref()
        .map(|l| &l.sha256)
        .or(file.blob_id.as_ref())
    else {
        return false;
    };
    if !repo_dir.join("blobs").join(etag).is_file() {
        return false;
    }
    let depth = Path::new(name).components().count(); // snapshots/<commit>/<name...>
    let target = format!("{}blobs/{etag}", "../".repeat(depth + 1));
    dest.parent()
        .is_some_and(|dir| std::fs::create_dir_all(dir).is_ok())
        && std::os::unix::fs::symlink(target, dest).is_ok()
}

#[cfg(not(unix))]
fn link_cached_blob(_: &Path, _: &Path, _: &str, _: &Sibling) -> bool {
    false // symlinks need privileges on Windows; just download again
}

/// The shard files named by an index's weight_map, each once.
fn shards(index: &Path) -> Result<BTreeSet<String>> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text =
        std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let index_json: Index =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", index.display()))?;
    let shards: BTreeSet<String> = index_json.weight_map.into_values().collect();
    // The names become paths inside the cache: keep them inside it.
    if let Some(bad) = shards.iter().find(|s| {
        !Path::new(s)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    }) {
        bail!("{} names an invalid shard file {bad:?}", index.display());
    }
    Ok(shards)
}

/// The snapshot `revision` points to in the cache, if it holds a whole model.
fn cached_snapshot(repo_dir: &Path, revision: &str) -> Result<PathBuf> {
    let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit {
        revision.to_string()
    } else {
        let refs = repo_dir.join("refs").join(revision);
        std::fs::read_to_string(&refs)
            .map_err(|_| {
                anyhow!(
                    "nothing cached for revision {revision} (no {})",
                    refs.display()
                )
            })?
            .trim()
            .to_string()
    };
    complete_snapshot(&repo_dir.join("snapshots").join(commit))
}

/// `dir` if it has the required files and every weight file, else an error naming what is missing.
fn complete_snapshot(dir: &Path) -> Result<PathBuf> {
    let mut missing: Vec<String> = REQUIRED
        .iter()
        .filter(|f| !dir.join(f).is_file())
        .map(|f| f.to_string())
        .collect();
    if dir.join(INDEX).is_file() {
        missing.extend(
            shards(&dir.join(INDEX))?
                .into_iter()
                .filter(|s| !dir.join(s).is_file()),
        );
    } else if !dir.join(SINGLE_FILE).is_file() {
        missing.push(format!("{SINGLE_FILE} (or {INDEX})"));
    }
    if !missing.is_empty() {
        bail!("{} lacks {}", dir.display(), missing.join(", "));
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_specs() {
        assert_eq!(
            parse_repo_spec("mlx-community/Qwen3-0.6B-4bit"),
            Some(("mlx-community/Qwen3-0.6B-4bit", "main"))
        );
        assert_eq!(
            parse_repo_spec("Qwen/Qwen3-8B-MLX-4bit@v1.0"),
            Some(("Qwen/Qwen3-8B-MLX-4bit", "v1.0"))
        );
        assert_eq!(parse_repo_spec("a/b@refs/pr/1"), Some(("a/b", "refs/pr/1")));
        for bad in [
            "qwen3",
            "a/b/c",
            "./a",
            "../a/b",
            "/abs/path",
            "a/",
            "/b",
            "a/b@",
            "a/b@../../x",
            "a b/c",
            "C:\\m\\x",
        ] {
            assert_eq!(parse_repo_spec(bad), None, "{bad}");
        }
    }
}
