use std::sync::Mutex;

use super::*;

fn creds() -> RoleCredentials {
    RoleCredentials {
        credentials_id: "exec".into(),
        role_arn: "arn:aws:iam::1:role/exec".into(),
        access_key_id: "AKIAEXEC".into(),
        secret_access_key: "s".into(),
        session_token: "t".into(),
        expiration: String::new(),
    }
}

fn file(arn: &str) -> EnvironmentFile {
    EnvironmentFile {
        value: arn.into(),
        kind: Some("s3".into()),
    }
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_format_is_the_official_agents() {
    let text = b"A=1\r\n#B=commented\n # C=not a comment\nno equals sign\n=empty key\nD= spaced = \"quoted\" $HOME\nA=2\nE=\nF=last line without newline";
    assert_eq!(
        parse(text).unwrap(),
        pairs(&[
            ("A", "2"),
            (" # C", "not a comment"),
            ("D", " spaced = \"quoted\" $HOME"),
            ("E", ""),
            ("F", "last line without newline"),
        ])
    );
    assert_eq!(parse(b"").unwrap(), vec![]);
    assert_eq!(parse(b"\n").unwrap(), vec![]);
    // A CR inside a value stays; only one trailing CR goes.
    assert_eq!(parse(b"X=a\rb\r\r\n").unwrap(), pairs(&[("X", "a\rb\r")]));
    let long = format!("K={}\n", "v".repeat(MAX_LINE_BYTES));
    assert!(parse(long.as_bytes()).unwrap_err().contains("longer than"));
    let fits = format!("K={}\n", "v".repeat(MAX_LINE_BYTES - 2));
    assert_eq!(parse(fits.as_bytes()).unwrap().len(), 1);
}

#[test]
fn the_first_file_that_defines_a_key_wins() {
    let merged = merge(vec![
        pairs(&[("A", "first"), ("B", "first")]),
        pairs(&[("B", "second"), ("C", "second")]),
    ]);
    assert_eq!(
        merged,
        pairs(&[("A", "first"), ("B", "first"), ("C", "second")])
    );
}

#[test]
fn arns_name_a_bucket_and_a_key_inside_it() {
    assert_eq!(
        parse_arn("arn:aws:s3:::my-bucket/path/app.env").unwrap(),
        ("my-bucket".into(), "path/app.env".into())
    );
    assert_eq!(
        parse_arn("arn:aws-cn:s3:::b/k").unwrap(),
        ("b".into(), "k".into())
    );
    for bad in [
        "arn:aws:s3:::bucket-only",
        "arn:aws:s3:::/key",
        "arn:aws:s3:::b/",
        "arn:aws:ssm:::b/k",
        "s3://b/k",
    ] {
        assert!(
            parse_arn(bad).unwrap_err().starts_with("unable to parse"),
            "{bad}"
        );
    }
    assert!(
        parse_arn("arn:aws:s3:::b/../../etc/passwd")
            .unwrap_err()
            .contains("escapes")
    );
}

/// Objects by (bucket, key); buckets by region; records every call.
#[derive(Default)]
struct FakeS3 {
    buckets: HashMap<String, String>,
    objects: HashMap<(String, String), Vec<u8>>,
    /// Calls that fail with a retryable error before succeeding.
    flaky: Mutex<u32>,
    calls: Mutex<Vec<String>>,
}

#[async_trait]
impl ObjectSource for FakeS3 {
    async fn bucket_region(
        &self,
        creds: &RoleCredentials,
        region: &str,
        bucket: &str,
    ) -> Result<String, FetchError> {
        self.calls.lock().unwrap().push(format!(
            "head {bucket} in {region} by {}",
            creds.access_key_id
        ));
        self.buckets.get(bucket).cloned().ok_or(FetchError {
            code: "NoSuchBucket".into(),
            text: "NoSuchBucket: gone".into(),
            retryable: false,
        })
    }

    async fn get_object(
        &self,
        _creds: &RoleCredentials,
        region: &str,
        bucket: &str,
        key: &str,
    ) -> Result<Vec<u8>, FetchError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("get {bucket}/{key} in {region}"));
        {
            let mut flaky = self.flaky.lock().unwrap();
            if *flaky > 0 {
                *flaky -= 1;
                return Err(FetchError {
                    code: "SlowDown".into(),
                    text: "SlowDown: later".into(),
                    retryable: true,
                });
            }
        }
        self.objects
            .get(&(bucket.to_owned(), key.to_owned()))
            .cloned()
            .ok_or(FetchError {
                code: "NoSuchKey".into(),
                text: "NoSuchKey: The specified key does not exist.".into(),
                retryable: false,
            })
    }
}

fn world() -> FakeS3 {
    let mut s3 = FakeS3::default();
    s3.buckets.insert("east".into(), "us-east-1".into());
    s3.buckets.insert("west".into(), "us-west-2".into());
    s3.objects.insert(
        ("east".into(), "a.env".into()),
        b"A=east-a\nB=east-a\n".to_vec(),
    );
    s3.objects.insert(
        ("east".into(), "b.env".into()),
        b"B=east-b\nC=east-b\n".to_vec(),
    );
    s3.objects.insert(
        ("west".into(), "c.env".into()),
        b"C=west-c\nD=west-c".to_vec(),
    );
    s3
}

#[tokio::test]
async fn each_bucket_is_located_once_and_each_object_read_once() {
    let s3 = world();
    let mut wanted = BTreeMap::new();
    wanted.insert(
        "app".to_owned(),
        vec![
            file("arn:aws:s3:::east/a.env"),
            file("arn:aws:s3:::east/b.env"),
            file("arn:aws:s3:::west/c.env"),
        ],
    );
    wanted.insert(
        "sidecar".to_owned(),
        vec![
            file("arn:aws:s3:::west/c.env"),
            file("arn:aws:s3:::east/a.env"),
        ],
    );
    wanted.insert("plain".to_owned(), vec![]);
    let got = fetch(&s3, Some(&creds()), &wanted, "us-east-1")
        .await
        .unwrap();
    assert_eq!(
        got["app"],
        pairs(&[
            ("A", "east-a"),
            ("B", "east-a"),
            ("C", "east-b"),
            ("D", "west-c")
        ])
    );
    assert_eq!(
        got["sidecar"],
        pairs(&[
            ("C", "west-c"),
            ("D", "west-c"),
            ("A", "east-a"),
            ("B", "east-a")
        ])
    );
    assert!(!got.contains_key("plain"));
    let mut calls = s3.calls.lock().unwrap().clone();
    calls.sort();
    assert_eq!(
        calls,
        vec![
            "get east/a.env in us-east-1",
            "get east/b.env in us-east-1",
            "get west/c.env in us-west-2",
            "head east in us-east-1 by AKIAEXEC",
            "head west in us-east-1 by AKIAEXEC",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn throttling_is_retried_and_a_missing_key_is_not() {
    let s3 = world();
    *s3.flaky.lock().unwrap() = 2;
    let mut wanted = BTreeMap::new();
    wanted.insert("app".to_owned(), vec![file("arn:aws:s3:::east/a.env")]);
    let got = fetch(&s3, Some(&creds()), &wanted, "us-east-1")
        .await
        .unwrap();
    assert_eq!(got["app"].len(), 2);
    let gets = |s3: &FakeS3| {
        s3.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with("get"))
            .count()
    };
    assert_eq!(gets(&s3), 3);

    let s3 = world();
    wanted.insert(
        "app".to_owned(),
        vec![
            file("arn:aws:s3:::east/missing.env"),
            file("arn:aws:s3:::gone/x.env"),
        ],
    );
    let why = fetch(&s3, Some(&creds()), &wanted, "us-east-1")
        .await
        .unwrap_err();
    assert_eq!(
        why,
        "unable to download env file with key missing.env from bucket east, error: NoSuchKey: The specified key does not exist.;\
         unable to download env file with key x.env from bucket gone, error: NoSuchBucket: gone"
    );
    assert_eq!(gets(&s3), 1, "a missing key is asked once");
}

#[tokio::test]
async fn no_execution_role_and_bad_arns_fail_before_any_call() {
    let s3 = world();
    let mut wanted = BTreeMap::new();
    wanted.insert("app".to_owned(), vec![file("arn:aws:s3:::east/a.env")]);
    assert_eq!(
        fetch(&s3, None, &wanted, "us-east-1").await.unwrap_err(),
        "environment file resource: unable to find execution role credentials"
    );
    wanted.insert("app".to_owned(), vec![file("arn:aws:s3:::east")]);
    assert!(
        fetch(&s3, Some(&creds()), &wanted, "us-east-1")
            .await
            .unwrap_err()
            .starts_with("unable to parse bucket and key")
    );
    assert!(s3.calls.lock().unwrap().is_empty());
    // A file with a line too long fails the task and names it.
    let mut s3 = world();
    s3.objects.insert(
        ("east".into(), "long.env".into()),
        format!("K={}", "x".repeat(MAX_LINE_BYTES)).into_bytes(),
    );
    wanted.insert("app".to_owned(), vec![file("arn:aws:s3:::east/long.env")]);
    let why = fetch(&s3, Some(&creds()), &wanted, "us-east-1")
        .await
        .unwrap_err();
    assert!(why.contains("key long.env from bucket east") && why.contains("longer than"));
}
