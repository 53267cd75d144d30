use std::sync::Mutex;

use super::*;

/// (region, secret id, version stage, version id) of one GetSecretValue.
type AsmCall = (String, String, Option<String>, Option<String>);

/// SSM and Secrets Manager in memory, recording every call.
#[derive(Default)]
struct Fake {
    /// (region, name as asked) → value.
    params: HashMap<(String, String), String>,
    /// (secret id, stage) → SecretString.
    secrets: HashMap<(String, Option<String>), String>,
    /// Calls left to fail with a throttling error.
    throttle: Mutex<u32>,
    /// Secret ids that answer AccessDeniedException.
    denied: Vec<String>,
    ssm_calls: Mutex<Vec<(String, Vec<String>)>>,
    asm_calls: Mutex<Vec<AsmCall>>,
}

#[async_trait]
impl SecretSource for Fake {
    async fn get_parameters(
        &self,
        creds: &RoleCredentials,
        region: &str,
        names: &[String],
    ) -> Result<Parameters, FetchError> {
        assert_eq!(creds.access_key_id, "ASIAEXEC");
        self.ssm_calls
            .lock()
            .unwrap()
            .push((region.to_owned(), names.to_vec()));
        {
            let mut t = self.throttle.lock().unwrap();
            if *t > 0 {
                *t -= 1;
                return Err(FetchError {
                    code: "ThrottlingException".into(),
                    text: "ThrottlingException: Rate exceeded".into(),
                    retryable: true,
                });
            }
        }
        let mut p = Parameters::default();
        for n in names {
            match self.params.get(&(region.to_owned(), n.clone())) {
                Some(v) => {
                    p.values.insert(n.clone(), v.clone());
                }
                None => p.invalid.push(n.clone()),
            }
        }
        Ok(p)
    }

    async fn get_secret_value(
        &self,
        creds: &RoleCredentials,
        region: &str,
        secret_id: &str,
        version_stage: Option<&str>,
        version_id: Option<&str>,
    ) -> Result<String, FetchError> {
        assert_eq!(creds.access_key_id, "ASIAEXEC");
        self.asm_calls.lock().unwrap().push((
            region.to_owned(),
            secret_id.to_owned(),
            version_stage.map(str::to_owned),
            version_id.map(str::to_owned),
        ));
        if self.denied.iter().any(|d| d == secret_id) {
            return Err(FetchError {
                code: "AccessDeniedException".into(),
                text: "AccessDeniedException: not authorized".into(),
                retryable: false,
            });
        }
        self.secrets
            .get(&(secret_id.to_owned(), version_stage.map(str::to_owned)))
            .cloned()
            .ok_or(FetchError {
                code: "ResourceNotFoundException".into(),
                text: "ResourceNotFoundException: no such secret".into(),
                retryable: false,
            })
    }
}

fn creds() -> RoleCredentials {
    RoleCredentials {
        credentials_id: "exec-id".into(),
        role_arn: "arn:aws:iam::123456789012:role/exec".into(),
        access_key_id: "ASIAEXEC".into(),
        secret_access_key: "s".into(),
        session_token: "t".into(),
        expiration: "2030-01-01T00:00:00Z".into(),
    }
}

fn ssm(name: &str, value_from: &str) -> SecretSpec {
    SecretSpec {
        name: name.into(),
        value_from: value_from.into(),
        region: Some("us-east-1".into()),
        provider: Some("ssm".into()),
        kind: Some("ENVIRONMENT_VARIABLE".into()),
        target: Some("CONTAINER".into()),
    }
}

fn asm(name: &str, value_from: &str) -> SecretSpec {
    SecretSpec {
        provider: Some("asm".into()),
        ..ssm(name, value_from)
    }
}

const SECRET: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf";

fn one(container: &str, list: Vec<SecretSpec>) -> BTreeMap<String, Vec<SecretSpec>> {
    [(container.to_owned(), list)].into_iter().collect()
}

#[tokio::test]
async fn twenty_parameters_take_two_calls_and_an_arn_is_asked_in_its_own_region() {
    let mut f = Fake::default();
    let mut list = Vec::new();
    for i in 0..20 {
        f.params
            .insert(("us-east-1".into(), format!("/p/{i}")), format!("v{i}"));
        list.push(ssm(&format!("P{i}"), &format!("/p/{i}")));
    }
    let arn = "arn:aws:ssm:eu-west-1:123456789012:parameter/other";
    f.params
        .insert(("eu-west-1".into(), arn.into()), "from-eu".into());
    list.push(ssm("OTHER", arn));
    // The same parameter twice is asked once.
    list.push(ssm("AGAIN", "/p/0"));
    let r = resolve(&f, Some(&creds()), &one("app", list), "us-east-1")
        .await
        .unwrap();
    let calls = f.ssm_calls.lock().unwrap().clone();
    let east: Vec<_> = calls.iter().filter(|(r, _)| r == "us-east-1").collect();
    assert_eq!(east.len(), 2, "{calls:?}");
    assert!(east.iter().all(|(_, n)| n.len() == 10));
    assert_eq!(
        calls.iter().filter(|(r, _)| r == "eu-west-1").count(),
        1,
        "{calls:?}"
    );
    let env: HashMap<_, _> = r.containers["app"].env.iter().cloned().collect();
    assert_eq!(env["P7"], "v7");
    assert_eq!(env["OTHER"], "from-eu");
    assert_eq!(env["AGAIN"], "v0");
    assert_eq!(env.len(), 22);
}

#[tokio::test]
async fn secrets_manager_forms_whole_json_key_stage_and_version() {
    let mut f = Fake::default();
    f.secrets.insert(
        (SECRET.into(), None),
        r#"{"user":"app","pass":"p4ss","port":5432}"#.into(),
    );
    f.secrets.insert(
        (SECRET.into(), Some("AWSPREVIOUS".into())),
        r#"{"pass":"old"}"#.into(),
    );
    let list = vec![
        asm("WHOLE", SECRET),
        asm("PASS", &format!("{SECRET}:pass::")),
        asm("PORT", &format!("{SECRET}:port::")),
        asm("OLD", &format!("{SECRET}:pass:AWSPREVIOUS:")),
        SecretSpec {
            target: Some("LOG_DRIVER".into()),
            ..asm("splunk-token", &format!("{SECRET}:user::"))
        },
    ];
    let r = resolve(&f, Some(&creds()), &one("app", list), "us-east-1")
        .await
        .unwrap();
    let c = &r.containers["app"];
    let env: HashMap<_, _> = c.env.iter().cloned().collect();
    assert_eq!(env["WHOLE"], r#"{"user":"app","pass":"p4ss","port":5432}"#);
    assert_eq!(env["PASS"], "p4ss");
    assert_eq!(env["PORT"], "5432");
    assert_eq!(env["OLD"], "old");
    assert_eq!(c.log_options, vec![("splunk-token".into(), "app".into())]);
    // One call per (secret, stage, version): the json keys share the current one.
    let calls = f.asm_calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls.contains(&(
        "us-east-1".into(),
        SECRET.into(),
        Some("AWSPREVIOUS".into()),
        None
    )));
    // Names only in Debug.
    let shown = format!("{r:?}");
    assert!(shown.contains("PASS") && !shown.contains("p4ss"), "{shown}");
}

#[tokio::test]
async fn failures_give_the_official_agents_reasons() {
    let mut f = Fake::default();
    f.params
        .insert(("us-east-1".into(), "/ok".into()), "v".into());
    f.secrets
        .insert((SECRET.into(), None), r#"{"a":"b"}"#.into());
    let denied = "arn:aws:secretsmanager:us-east-1:123456789012:secret:denied-XyZ";
    f.denied.push(denied.into());
    let cases: Vec<(Vec<SecretSpec>, &str)> = vec![
        (
            vec![ssm("A", "/ok"), ssm("B", "/missing"), ssm("C", "/gone")],
            "fetching secret data from SSM Parameter Store in us-east-1: invalid parameters: /missing,/gone",
        ),
        (
            vec![asm(
                "A",
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:nope-123",
            )],
            "ResourceNotFoundException: The task can't retrieve the secret with ARN 'arn:aws:secretsmanager:us-east-1:123456789012:secret:nope-123' from AWS Secrets Manager. Check whether the secret exists in the specified Region",
        ),
        (
            vec![asm("A", denied)],
            "fetching secret data from AWS Secrets Manager in region us-east-1: secret arn:aws:secretsmanager:us-east-1:123456789012:secret:denied-XyZ: AccessDeniedException: not authorized",
        ),
        (
            vec![asm("A", &format!("{SECRET}:nokey::"))],
            "retrieved secret from Secrets Manager did not contain json key nokey",
        ),
        (
            vec![asm("A", "db-password")],
            "an invalid ARN format for the AWS Secrets Manager secret was specified. Specify a valid ARN and try again.",
        ),
        (
            vec![asm("A", &format!("{SECRET}:only-key"))],
            "an invalid ARN format for the AWS Secrets Manager secret was specified. Specify a valid ARN and try again.",
        ),
    ];
    for (list, want) in cases {
        let got = resolve(&f, Some(&creds()), &one("app", list), "us-east-1").await;
        assert_eq!(got.unwrap_err(), want);
    }
    // No execution role: nothing is asked.
    let before = f.ssm_calls.lock().unwrap().len();
    let got = resolve(&f, None, &one("app", vec![ssm("A", "/ok")]), "us-east-1").await;
    assert_eq!(
        got.unwrap_err(),
        "ssm secret resource: unable to find execution role credentials"
    );
    let got = resolve(&f, None, &one("app", vec![asm("A", SECRET)]), "us-east-1").await;
    assert_eq!(
        got.unwrap_err(),
        "ASM secret resource: unable to find execution role credentials"
    );
    assert_eq!(f.ssm_calls.lock().unwrap().len(), before);
}

#[tokio::test(start_paused = true)]
async fn throttling_is_retried_and_a_denial_is_not() {
    let mut f = Fake::default();
    f.params
        .insert(("us-east-1".into(), "/ok".into()), "v".into());
    *f.throttle.lock().unwrap() = 2;
    let r = resolve(
        &f,
        Some(&creds()),
        &one("app", vec![ssm("A", "/ok")]),
        "us-east-1",
    )
    .await
    .unwrap();
    assert_eq!(r.containers["app"].env, vec![("A".into(), "v".into())]);
    assert_eq!(f.ssm_calls.lock().unwrap().len(), 3);
    let denied = "arn:aws:secretsmanager:us-east-1:123456789012:secret:denied-XyZ";
    f.denied.push(denied.into());
    assert!(
        resolve(
            &f,
            Some(&creds()),
            &one("app", vec![asm("A", denied)]),
            "us-east-1"
        )
        .await
        .is_err()
    );
    assert_eq!(f.asm_calls.lock().unwrap().len(), 1);
}

#[test]
fn asm_arns() {
    let r = parse_asm(&format!("{SECRET}:pass:AWSCURRENT:v-1")).unwrap();
    assert_eq!(r.secret_id, SECRET);
    assert_eq!(r.json_key.as_deref(), Some("pass"));
    assert_eq!(r.version_stage.as_deref(), Some("AWSCURRENT"));
    assert_eq!(r.version_id.as_deref(), Some("v-1"));
    assert_eq!(parse_asm(SECRET).unwrap().secret_id, SECRET);
    assert!(parse_asm("arn:aws:ssm:us-east-1:1:parameter/x").is_err());
    assert_eq!(
        ssm_region(
            &ssm("A", "arn:aws:ssm:ap-south-1:1:parameter/x"),
            "us-west-2"
        ),
        "ap-south-1"
    );
    assert_eq!(ssm_region(&ssm("A", "/x"), "us-west-2"), "us-east-1");
    let no_region = SecretSpec {
        region: None,
        ..ssm("A", "/x")
    };
    assert_eq!(ssm_region(&no_region, "us-west-2"), "us-west-2");
}

#[tokio::test]
async fn registry_logins_are_read_once_per_secret_in_its_region() {
    let mut f = Fake::default();
    let west = "arn:aws:secretsmanager:us-west-2:123456789012:secret:reg-west-AbCdEf";
    f.secrets.insert(
        (west.into(), None),
        r#"{"username":"u-west","password":"p-west","other":1}"#.into(),
    );
    f.secrets.insert(
        ("by-name".into(), None),
        r#"{"username":"u-name","password":"p-name"}"#.into(),
    );
    let auth = |parameter: &str, region: Option<&str>| AsmAuthData {
        credentials_parameter: parameter.into(),
        region: region.map(str::to_owned),
    };
    let wanted: BTreeMap<String, AsmAuthData> = [
        ("a".to_owned(), auth(west, Some(""))),
        ("b".to_owned(), auth(west, None)),
        ("c".to_owned(), auth("by-name", Some("eu-west-1"))),
    ]
    .into_iter()
    .collect();
    let logins = registry_logins(&f, Some(&creds()), &wanted, "us-east-1")
        .await
        .unwrap();
    assert_eq!(logins["a"].username, "u-west");
    assert_eq!(logins["a"].password, "p-west");
    assert_eq!(logins["b"], logins["a"]);
    assert_eq!(logins["c"].username, "u-name");
    assert!(!format!("{:?}", logins["c"]).contains("p-name"));
    let mut calls = f.asm_calls.lock().unwrap().clone();
    calls.sort();
    assert_eq!(
        calls,
        vec![
            ("eu-west-1".into(), "by-name".into(), None, None),
            ("us-west-2".into(), west.into(), None, None),
        ],
        "one call per secret, in the ARN's region (else the one ECS gave)"
    );
}

#[tokio::test]
async fn a_registry_login_that_cannot_be_used_is_a_pull_failure_with_the_official_text() {
    let mut f = Fake::default();
    for (id, value) in [
        ("empty", ""),
        ("not-json", "user:pass"),
        ("no-user", r#"{"password":"p"}"#),
        ("no-password", r#"{"username":"u","password":""}"#),
    ] {
        f.secrets.insert((id.into(), None), value.into());
    }
    f.denied.push("denied".into());
    let cases = [
        (
            "empty",
            "asm fetching authorization data: empty secrets value",
        ),
        (
            "not-json",
            "asm fetching authorization data: unable to unmarshal secret value, invalid schema",
        ),
        (
            "no-user",
            "asm fetching username: AuthorizationData is malformed, empty field",
        ),
        (
            "no-password",
            "asm fetching password: AuthorizationData is malformed, empty field",
        ),
        (
            "denied",
            "asm fetching secret from the service for denied: AccessDeniedException: not authorized",
        ),
        (
            "missing",
            "ResourceNotFoundException: The task can't retrieve the secret with ARN 'missing' from AWS Secrets Manager.",
        ),
    ];
    for (id, want) in cases {
        let wanted: BTreeMap<String, AsmAuthData> = [(
            "app".to_owned(),
            AsmAuthData {
                credentials_parameter: id.into(),
                region: None,
            },
        )]
        .into_iter()
        .collect();
        let why = registry_logins(&f, Some(&creds()), &wanted, "us-east-1")
            .await
            .unwrap_err();
        assert!(
            why.starts_with(&format!("CannotPullContainerError: {want}")),
            "{id}: {why}"
        );
        assert_eq!(
            registry_logins(&f, None, &wanted, "us-east-1")
                .await
                .unwrap_err(),
            "CannotPullContainerError: asm resource: unable to find execution role credentials"
        );
    }
    assert!(
        registry_logins(&f, None, &BTreeMap::new(), "us-east-1")
            .await
            .unwrap()
            .is_empty(),
        "nothing asked, nothing needed"
    );
}
