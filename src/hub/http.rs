//! Talking to the hub: the file listing, and file downloads that resume with
//! Range requests and are hashed as they stream.
//!
//! Redirects are followed here, not by ureq, so that the token goes only to
//! the hub's own origin (never to the CDN that LFS files redirect to) and the
//! hub's own answer (its `x-repo-commit` and `etag`) can be checked.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use url::Url;

use super::listing::{is_commit, is_hex, shown, Hasher, Listing, RemoteFile};
use super::store::hash_prefix;

const MAX_REDIRECTS: usize = 10;
/// Attempts per file after the first, for dropped connections and 5xx answers.
const RETRIES: u32 = 3;
/// A listing is a few kB per file; this is far more than any real repo needs.
const MAX_LISTING_BYTES: u64 = 64 << 20;

pub(crate) struct Client {
    agent: ureq::Agent,
    endpoint: Url,
    token: Option<String>,
}

/// Why a request got no usable answer.
enum Failure {
    /// No answer at all (DNS, connection, TLS, timeout, a broken redirect).
    Network(String),
    /// An HTTP error status; `code` is the hub's `x-error-code`, if any.
    Status { status: u16, code: String, url: Url },
}

/// The answer to a GET, after redirects, with what the hub itself said.
struct Answer {
    response: ureq::Response,
    /// `x-repo-commit`, `x-linked-etag` and `etag` of the last answer from the hub's origin.
    commit: Option<String>,
    etag: Option<String>,
}

/// How one download attempt ended, when it did not end with the whole file.
enum Attempt {
    /// The connection broke or the hub is overloaded: try again, resuming.
    Retry(anyhow::Error),
    /// The answer cannot continue the partial file: try again from byte 0.
    Restart(anyhow::Error),
    /// No point in trying again.
    Fatal(anyhow::Error),
}

impl Client {
    pub(crate) fn new(endpoint: &str, token: Option<String>) -> Result<Client> {
        let endpoint = Url::parse(endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .with_context(|| format!("HF_ENDPOINT {} is not an http(s) URL", shown(endpoint)))?;
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .try_proxy_from_env(true)
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(60))
            .timeout_write(Duration::from_secs(60))
            .user_agent(concat!("webqwen/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client { agent, endpoint, token })
    }

    /// `endpoint` without a trailing slash, for messages.
    pub(crate) fn endpoint(&self) -> &str {
        self.endpoint.as_str().trim_end_matches('/')
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.endpoint.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// `<endpoint>/<repo>/resolve/<commit>/<file>`, each part percent-encoded.
    pub(crate) fn resolve_url(&self, repo_id: &str, commit: &str, name: &str) -> Url {
        let mut segments: Vec<&str> = repo_id.split('/').collect();
        segments.extend(["resolve", commit]);
        segments.extend(name.split('/'));
        self.url(&segments)
    }

    /// GET `url`, following redirects; the token goes only to the hub's origin.
    fn get(&self, url: &Url, from: Option<u64>) -> Result<Answer, Failure> {
        let (mut url, mut commit, mut etag) = (url.clone(), None, None);
        for _ in 0..=MAX_REDIRECTS {
            let hub = url.origin() == self.endpoint.origin();
            let mut request = self.agent.request_url("GET", &url);
            if let (true, Some(token)) = (hub, &self.token) {
                request = request.set("Authorization", &format!("Bearer {token}"));
            }
            if let Some(from) = from {
                request = request.set("Range", &format!("bytes={from}-"));
            }
            let response = match request.call() {
                Ok(response) => response,
                Err(ureq::Error::Status(status, response)) => {
                    let code = response.header("x-error-code").unwrap_or_default().to_string();
                    return Err(Failure::Status { status, code, url });
                }
                Err(ureq::Error::Transport(err)) => return Err(Failure::Network(err.to_string())),
            };
            if hub {
                let header = |name: &str| response.header(name).map(str::to_string);
                commit = header("x-repo-commit").or(commit);
                etag = header("x-linked-etag").or_else(|| header("etag")).or(etag);
            }
            if !(300..400).contains(&response.status()) {
                return Ok(Answer { response, commit, etag });
            }
            let location = response.header("location").unwrap_or_default();
            url = match url.join(location) {
                Ok(next) if !location.is_empty() && matches!(next.scheme(), "http" | "https") => next,
                _ => {
                    return Err(Failure::Network(format!(
                        "{url} answered {} with an unusable redirect {}",
                        response.status(),
                        shown(location)
                    )))
                }
            };
        }
        Err(Failure::Network(format!("more than {MAX_REDIRECTS} redirects from {url}")))
    }

    /// The listing of `revision`. The inner `Err` is a failure to get an
    /// answer (unreachable, 5xx), where a cached copy can stand in; an answer
    /// like 404 is the outer error.
    pub(crate) fn listing(&self, repo_id: &str, revision: &str, spec: &str) -> Result<Result<Listing, String>> {
        let mut segments = vec!["api", "models"];
        segments.extend(repo_id.split('/'));
        segments.extend(["revision", revision]);
        let mut url = self.url(&segments);
        url.set_query(Some("blobs=true"));
        let endpoint = self.endpoint();
        let answer = match self.get(&url, None) {
            Ok(answer) => answer,
            Err(Failure::Network(message)) => return Ok(Err(message)),
            Err(Failure::Status { status, code, url }) => {
                let what = format!("HTTP {status} from {url}");
                return Err(match (status, code.as_str()) {
                    (_, "RevisionNotFound") => anyhow!("{spec}: no such revision on {endpoint} ({what})"),
                    // The hub answers 401 rather than 404 for unknown repos when no token is sent.
                    (401 | 404, _) => anyhow!(
                        "{spec} is not a local directory, and {endpoint} has no model repo {repo_id} \
                         ({what}); check the name, or set HF_TOKEN if the repo is private"
                    ),
                    (403, _) => anyhow!(
                        "access to {spec} denied ({what}); for a gated repo accept its terms on the \
                         hub and set HF_TOKEN"
                    ),
                    // Hub down or overloaded: as good as unreachable, the cache may help.
                    (500.., _) => return Ok(Err(what)),
                    _ => anyhow!("the hub at {endpoint} answered {status} for {spec} ({url})"),
                });
            }
        };
        let mut body = Vec::new();
        if let Err(e) = answer.response.into_reader().take(MAX_LISTING_BYTES + 1).read_to_end(&mut body) {
            return Ok(Err(format!("reading the answer of {url}: {e}")));
        }
        if body.len() as u64 > MAX_LISTING_BYTES {
            bail!("{endpoint} sent a file listing for {spec} larger than {MAX_LISTING_BYTES} bytes");
        }
        Listing::parse(&body, endpoint).map(Ok)
    }

    /// Downloads `file` of `commit` from `url` into `partial`, resuming what
    /// an earlier run left there, and checks that it hashes to `file.digest`.
    /// On success `partial` holds exactly the listed bytes.
    pub(crate) fn download(
        &self,
        url: &Url,
        file: &RemoteFile,
        commit: &str,
        partial: &Path,
        progress: bool,
    ) -> Result<()> {
        let bar = progress_bar(file, progress);
        let (mut resume, mut failures) = (true, 0);
        loop {
            let have = if resume { fs::metadata(partial).map_or(0, |m| m.len()) } else { 0 };
            let from = if have > file.size { 0 } else { have };
            let err = match self.attempt(url, file, commit, partial, from, &bar) {
                Ok(hex) if hex == file.digest.hex() => {
                    bar.finish_and_clear();
                    return Ok(());
                }
                Ok(hex) => {
                    let _ = fs::remove_file(partial);
                    let err = anyhow!(
                        "{} from {url} does not match the hub's listing: its {} is {hex}, the \
                         listing says {}; refusing it (the download was deleted)",
                        file.name,
                        file.digest.kind(),
                        file.digest.hex()
                    );
                    if from == 0 {
                        bar.abandon();
                        return Err(err);
                    }
                    // The part kept from an earlier run may be what is wrong.
                    resume = false;
                    err
                }
                Err(Attempt::Fatal(err)) => {
                    bar.abandon();
                    return Err(err);
                }
                Err(Attempt::Retry(err)) => err,
                Err(Attempt::Restart(err)) => {
                    let _ = fs::remove_file(partial);
                    resume = false;
                    err
                }
            };
            failures += 1;
            if failures > RETRIES {
                bar.abandon();
                return Err(err.context(format!("giving up on {} after {failures} attempts", file.name)));
            }
            if progress {
                bar.suspend(|| eprintln!("note: {err:#}; trying again"));
            }
            std::thread::sleep(Duration::from_millis(300 << failures));
        }
    }

    /// One GET of `file` from byte `from` (what `partial` already holds);
    /// returns the hex digest of the whole file once it is complete.
    fn attempt(
        &self,
        url: &Url,
        file: &RemoteFile,
        commit: &str,
        partial: &Path,
        from: u64,
        bar: &ProgressBar,
    ) -> Result<String, Attempt> {
        let fatal = |e: anyhow::Error| Attempt::Fatal(e);
        let mut out = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(partial)
            .with_context(|| format!("opening {}", partial.display()))
            .map_err(fatal)?;
        let mut hasher = Hasher::new(&file.digest, file.size);
        let kept = hash_prefix(&mut out, &mut hasher, from)
            .with_context(|| format!("reading {}", partial.display()))
            .map_err(fatal)?;
        if kept < from {
            return Err(Attempt::Restart(anyhow!("{} shrank while resuming", partial.display())));
        }
        if from == file.size {
            return Ok(hasher.finish()); // an earlier run got it all
        }

        let answer = self.get(url, (from > 0).then_some(from)).map_err(|failure| self.explain(failure, &file.name))?;
        self.check_hub_answer(&answer, file, commit).map_err(fatal)?;
        let response = answer.response;
        let host = response.get_url().to_string();
        let start = match response.status() {
            200 => 0,
            206 => {
                let range = response.header("content-range");
                let expected = file.size.checked_sub(1).map(|last| (from, last, Some(file.size)));
                let sent = range.and_then(content_range);
                if sent.is_none() || sent != expected {
                    return Err(Attempt::Restart(anyhow!(
                        "{host} answered a request for {} from byte {from} with 206 and Content-Range \
                         {}, which does not continue the file; not appending it, downloading from the start",
                        file.name,
                        range.map_or("(none)".into(), shown)
                    )));
                }
                from
            }
            status => return Err(fatal(anyhow!("{host} answered {status} for {}", file.name))),
        };
        let remaining = file.size - start;
        if let Some(len) = response.header("content-length").and_then(|l| l.trim().parse::<u64>().ok()) {
            if len != remaining {
                return Err(fatal(anyhow!(
                    "{host} sends {len} bytes for {} from byte {start}, but the hub's listing gives \
                     it {} bytes; refusing it",
                    file.name,
                    file.size
                )));
            }
        }
        if start == 0 {
            hasher = Hasher::new(&file.digest, file.size);
        }
        let write_err = |e: std::io::Error| fatal(anyhow!(e).context(format!("writing {}", partial.display())));
        out.set_len(start).map_err(write_err)?;
        out.seek(SeekFrom::Start(start)).map_err(write_err)?;
        bar.set_position(start);

        let mut body = response.into_reader().take(remaining.saturating_add(1));
        let mut buf = vec![0u8; 1 << 16];
        let mut pos = start;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Attempt::Retry(anyhow!(
                        "the download of {} broke off at byte {pos} of {}: {e}",
                        file.name,
                        file.size
                    )))
                }
            };
            if pos.saturating_add(n as u64) > file.size {
                let _ = fs::remove_file(partial);
                return Err(fatal(anyhow!(
                    "{host} sends more than the {} bytes the hub's listing gives {}; refusing it",
                    file.size,
                    file.name
                )));
            }
            out.write_all(&buf[..n]).map_err(write_err)?;
            hasher.update(&buf[..n]);
            pos += n as u64;
            bar.set_position(pos);
        }
        if pos < file.size {
            return Err(Attempt::Retry(anyhow!("the download of {} ended at byte {pos} of {}", file.name, file.size)));
        }
        out.sync_all().map_err(write_err)?;
        Ok(hasher.finish())
    }

    /// The hub's own answer must be about this commit and this file.
    fn check_hub_answer(&self, answer: &Answer, file: &RemoteFile, commit: &str) -> Result<()> {
        let endpoint = self.endpoint();
        if let Some(sent) = &answer.commit {
            if !is_commit(sent) {
                bail!(
                    "{endpoint} sent x-repo-commit {} for {}, not a commit id; refusing it. Is \
                     HF_ENDPOINT a Hugging Face hub?",
                    shown(sent),
                    file.name
                );
            }
            if sent != commit {
                bail!("{endpoint} answered for {} with commit {sent}, not {commit}; refusing it", file.name);
            }
        }
        if let Some(sent) = &answer.etag {
            let tag = sent.trim().trim_start_matches("W/").trim_matches('"');
            if !(is_hex(tag, 64) || is_hex(tag, 40)) {
                bail!(
                    "{endpoint} sent the etag {} for {}, not a hex hash; refusing it. Is HF_ENDPOINT \
                     a Hugging Face hub?",
                    shown(tag),
                    file.name
                );
            }
            if tag != file.digest.hex() && Some(tag) != file.blob_id.as_deref() {
                bail!(
                    "{endpoint} sent the etag {tag} for {}, but its listing gives {} {}; refusing it",
                    file.name,
                    file.digest.kind(),
                    file.digest.hex()
                );
            }
        }
        Ok(())
    }

    fn explain(&self, failure: Failure, name: &str) -> Attempt {
        let endpoint = self.endpoint();
        match failure {
            Failure::Network(message) => Attempt::Retry(anyhow!(
                "downloading {name} failed: {message}; check the network, or point HF_ENDPOINT at a \
                 reachable hub or mirror (now {endpoint})"
            )),
            Failure::Status { status: 401 | 403, url, .. } => {
                Attempt::Fatal(anyhow!("access to {url} denied (HTTP 401/403); set HF_TOKEN (gated or private repo)"))
            }
            Failure::Status { status: 416, url, .. } => {
                Attempt::Restart(anyhow!("{url} cannot resume {name} (HTTP 416)"))
            }
            Failure::Status { status: status @ (429 | 500..), url, .. } => {
                Attempt::Retry(anyhow!("downloading {url} failed with HTTP {status}"))
            }
            Failure::Status { status, code, url } => Attempt::Fatal(anyhow!(
                "downloading {url} failed with HTTP {status}{}",
                if code.is_empty() { String::new() } else { format!(" ({code})") }
            )),
        }
    }
}

/// `bytes <first>-<last>/<total or *>` as numbers (total `None` for `*`).
fn content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let (range, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let num = |s: &str| s.trim().parse::<u64>().ok();
    let total = if total.trim() == "*" { None } else { Some(num(total)?) };
    Some((num(first)?, num(last)?, total))
}

fn progress_bar(file: &RemoteFile, progress: bool) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(file.size).with_message(file.name.clone());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(content_range("bytes 5-9/10"), Some((5, 9, Some(10))));
        assert_eq!(content_range(" bytes 0-0/*"), Some((0, 0, None)));
        for bad in ["", "bytes */10", "bytes 5-/10", "5-9/10", "bytes 5-9", "bytes a-9/10", "bytes -1-9/10"] {
            assert_eq!(content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn urls_are_percent_encoded_under_the_endpoint() {
        let client = Client::new("http://127.0.0.1:9/mirror/", None).unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            client.resolve_url("o/n", commit, "sub/a b#.json").as_str(),
            format!("http://127.0.0.1:9/mirror/o/n/resolve/{commit}/sub/a%20b%23.json")
        );
        assert_eq!(client.endpoint(), "http://127.0.0.1:9/mirror");
        for bad in ["", "huggingface.co", "file:///etc", "ftp://x"] {
            assert!(Client::new(bad, None).is_err(), "{bad}");
        }
    }

    fn file(digest: &str, blob_id: Option<&str>) -> RemoteFile {
        RemoteFile {
            name: "f".into(),
            size: 1,
            digest: super::super::listing::Digest::from_blob_name(digest).unwrap(),
            blob_id: blob_id.map(str::to_string),
        }
    }

    #[test]
    fn hub_answers_must_match_the_listing() {
        let client = Client::new("http://127.0.0.1:9", None).unwrap();
        let sha = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        let blob = "ce013625030ba8dba906f756967f9e9ca394464a";
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let check = |commit_header: Option<&str>, etag: Option<&str>| {
            let response = ureq::Response::new(200, "OK", "").unwrap();
            let answer = Answer { response, commit: commit_header.map(str::to_string), etag: etag.map(str::to_string) };
            client.check_hub_answer(&answer, &file(sha, Some(blob)), commit)
        };
        check(Some(commit), Some(&format!("\"{sha}\""))).unwrap();
        check(None, Some(&format!("W/\"{blob}\""))).unwrap();
        check(None, None).unwrap();
        for (c, e, says) in [
            (Some("../../.."), None, "x-repo-commit"),
            (Some("1123456789abcdef0123456789abcdef01234567"), None, "not 0123"),
            (None, Some("\"/an/absolute/path\""), "not a hex hash"),
            (None, Some("../../../../x"), "not a hex hash"),
            (None, Some("\"1891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03\""), "listing gives"),
        ] {
            let err = check(c, e).unwrap_err().to_string();
            assert!(err.contains(says), "{c:?} {e:?}: {err}");
        }
    }
}
