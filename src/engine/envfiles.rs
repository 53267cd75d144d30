//! Environment files from S3 (issue 19; container-features.md §4, task-credentials.md §9.6): a
//! container's `environmentFiles`, read with the task's execution-role credentials once per task
//! start, before its containers are created.
//!
//! Owns the ARN form (`arn:<partition>:s3:::<bucket>/<key>`), the bucket-region lookup (once per
//! bucket), the file format exactly as the official agent reads it, the size limits, and the
//! precedence across files (the first file that defines a key wins; a later line wins within a
//! file). The variables stay in the engine's memory like secrets: no file on disk, no log line,
//! no state file. Never decides when to fetch (the reconciler does) nor where a file's variables
//! rank against the task definition's `environment` (`docker` puts them below it).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::secrets::{FetchError, with_retries};
use crate::credentials::RoleCredentials;

/// Largest environment file read. Linux execs a process with at most 2 MiB of arguments and
/// environment together (`ARG_MAX` of the default 8 MiB stack), so a larger file could never
/// start; refusing it up front names the file instead of failing at start.
pub const MAX_FILE_BYTES: usize = 2 * 1024 * 1024;
/// Longest line (Go's `bufio.Scanner` default, which the official agent reads with).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Time for each S3 step of a file, retries included: its bucket's region, then its read (the
/// official agent's S3 download timeout).
pub const FILE_TIMEOUT: Duration = Duration::from_secs(30);

/// One item of a container's `environmentFiles` as ACS sends it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentFile {
    /// `arn:aws:s3:::bucket/key`.
    #[serde(default)]
    pub value: String,
    /// `s3` (the only type).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// S3, signed with the given credentials.
#[async_trait]
pub trait ObjectSource: Send + Sync {
    /// The region of `bucket`, asked in `region`.
    async fn bucket_region(
        &self,
        creds: &RoleCredentials,
        region: &str,
        bucket: &str,
    ) -> Result<String, FetchError>;

    /// The bytes of `key` in `bucket` (in the bucket's `region`), at most [`MAX_FILE_BYTES`].
    async fn get_object(
        &self,
        creds: &RoleCredentials,
        region: &str,
        bucket: &str,
        key: &str,
    ) -> Result<Vec<u8>, FetchError>;
}

/// Bucket and key of an environment file's ARN (`arn:([^:]+):s3:::([^/]+)/(.+)`), refusing keys
/// that climb out of a directory (`..` segments), as the official agent refuses them.
pub fn parse_arn(arn: &str) -> Result<(String, String), String> {
    let bad =
        || format!("unable to parse bucket and key from s3 ARN specified in environmentFile {arn}");
    let rest = arn.strip_prefix("arn:").ok_or_else(bad)?;
    let (partition, rest) = rest.split_once(':').ok_or_else(bad)?;
    let rest = rest.strip_prefix("s3:::").ok_or_else(bad)?;
    let (bucket, key) = rest.split_once('/').ok_or_else(bad)?;
    if partition.is_empty() || bucket.is_empty() || key.is_empty() {
        return Err(bad());
    }
    if key.split('/').any(|s| s == "..") || bucket == "." || bucket == ".." {
        return Err(format!(
            "invalid path: bucket {bucket:?} key {key:?} escapes envfile resource directory"
        ));
    }
    Ok((bucket.to_owned(), key.to_owned()))
}

/// The variables of one file: lines split at `\n` (one trailing `\r` removed), `#` lines and
/// lines without `=` skipped, key and value split at the first `=` verbatim, empty keys
/// skipped, a later duplicate winning. A line longer than [`MAX_LINE_BYTES`] fails.
pub fn parse(bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body.is_empty() {
        return Ok(out);
    }
    for raw in body.split(|b| *b == b'\n') {
        if raw.len() > MAX_LINE_BYTES {
            return Err(format!(
                "a line is longer than {MAX_LINE_BYTES} bytes (bufio.Scanner: token too long)"
            ));
        }
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = String::from_utf8_lossy(line);
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.is_empty() {
            continue;
        }
        match index.get(key) {
            Some(&i) => out[i].1 = value.to_owned(),
            None => {
                index.insert(key.to_owned(), out.len());
                out.push((key.to_owned(), value.to_owned()));
            }
        }
    }
    Ok(out)
}

/// The variables of a container's files in list order: the first file that defines a key wins.
pub fn merge(files: Vec<Vec<(String, String)>>) -> Vec<(String, String)> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for file in files {
        for (k, v) in file {
            if seen.insert(k.clone()) {
                out.push((k, v));
            }
        }
    }
    out
}

/// Reads every container's files (container name → its files): each bucket's region once, each
/// distinct object once, all at once. `Err` is the task's stop reason (the official agent's
/// words; several failures joined with `;`).
pub async fn fetch(
    source: &dyn ObjectSource,
    creds: Option<&RoleCredentials>,
    containers: &BTreeMap<String, Vec<EnvironmentFile>>,
    default_region: &str,
) -> Result<HashMap<String, Vec<(String, String)>>, String> {
    if containers.values().all(Vec::is_empty) {
        return Ok(HashMap::new());
    }
    let Some(creds) = creds else {
        return Err(
            "environment file resource: unable to find execution role credentials".to_owned(),
        );
    };
    // Each container's files as (bucket, key), in list order; then the distinct objects.
    let mut errors: Vec<String> = Vec::new();
    let wanted: Vec<(&String, Vec<(String, String)>)> = containers
        .iter()
        .filter(|(_, files)| !files.is_empty())
        .map(|(name, files)| {
            let objects = files
                .iter()
                .filter_map(|f| parse_arn(&f.value).map_err(|e| errors.push(e)).ok())
                .collect();
            (name, objects)
        })
        .collect();
    if !errors.is_empty() {
        return Err(errors.join(";"));
    }
    let mut objects: Vec<(String, String)> = Vec::new();
    for o in wanted.iter().flat_map(|(_, list)| list) {
        if !objects.contains(o) {
            objects.push(o.clone());
        }
    }
    let mut buckets: Vec<String> = objects.iter().map(|(b, _)| b.clone()).collect();
    buckets.sort();
    buckets.dedup();
    let regions = futures_util::future::join_all(buckets.iter().map(|b| async move {
        let found = tokio::time::timeout(
            FILE_TIMEOUT,
            with_retries(|| source.bucket_region(creds, default_region, b)),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out()));
        (b.clone(), found)
    }))
    .await
    .into_iter()
    .collect::<HashMap<_, _>>();
    let bodies = futures_util::future::join_all(objects.iter().map(|(bucket, key)| {
        let region = regions[bucket].clone();
        async move {
            let region = region?;
            let bytes = tokio::time::timeout(
                FILE_TIMEOUT,
                with_retries(|| source.get_object(creds, &region, bucket, key)),
            )
            .await
            .unwrap_or_else(|_| Err(timed_out()))?;
            parse(&bytes).map_err(|text| FetchError {
                code: String::new(),
                text,
                retryable: false,
            })
        }
    }))
    .await;
    let mut parsed: HashMap<(String, String), Vec<(String, String)>> = HashMap::new();
    for ((bucket, key), body) in objects.into_iter().zip(bodies) {
        match body {
            Ok(vars) => {
                parsed.insert((bucket, key), vars);
            }
            Err(e) => errors.push(format!(
                "unable to download env file with key {key} from bucket {bucket}, error: {}",
                e.text
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join(";"));
    }
    Ok(wanted
        .into_iter()
        .map(|(name, list)| {
            let vars = list.iter().filter_map(|o| parsed.get(o).cloned()).collect();
            (name.clone(), merge(vars))
        })
        .collect())
}

fn timed_out() -> FetchError {
    FetchError {
        code: String::new(),
        text: format!("timed out after {} s", FILE_TIMEOUT.as_secs()),
        retryable: false,
    }
}

/// S3 through [`crate::aws::s3`], the client built at the first use (an agent whose tasks have
/// no environment files never loads the TLS roots for it).
#[derive(Debug, Default)]
pub struct S3Objects {
    client: std::sync::OnceLock<Result<crate::aws::s3::S3, crate::aws::s3::S3Error>>,
}

impl S3Objects {
    fn client(&self) -> Result<&crate::aws::s3::S3, FetchError> {
        self.client
            .get_or_init(crate::aws::s3::S3::from_env)
            .as_ref()
            .map_err(|e| fetch_error(e.clone()))
    }
}

#[async_trait]
impl ObjectSource for S3Objects {
    async fn bucket_region(
        &self,
        creds: &RoleCredentials,
        region: &str,
        bucket: &str,
    ) -> Result<String, FetchError> {
        self.client()?
            .bucket_region(creds, region, bucket)
            .await
            .map_err(fetch_error)
    }

    async fn get_object(
        &self,
        creds: &RoleCredentials,
        region: &str,
        bucket: &str,
        key: &str,
    ) -> Result<Vec<u8>, FetchError> {
        self.client()?
            .get_object(creds, region, bucket, key, MAX_FILE_BYTES)
            .await
            .map_err(fetch_error)
    }
}

fn fetch_error(e: crate::aws::s3::S3Error) -> FetchError {
    FetchError {
        retryable: e.is_retryable(),
        text: e.to_string(),
        code: e.code,
    }
}

#[cfg(test)]
mod tests;
