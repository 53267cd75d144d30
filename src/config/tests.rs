//! Tests of the whole load: precedence, diagnostics with file/line/key, strictness, defaults.

use super::*;
use std::io::Write;

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        p
    }
    fn missing(&self) -> PathBuf {
        self.dir.path().join("absent")
    }
}

/// Options reading only the given files (never the real /etc), with the given env and flags.
fn opts(files: &Files, ecs: Option<PathBuf>, toml: Option<PathBuf>) -> LoadOptions {
    LoadOptions {
        ecs_config: Some(ecs.unwrap_or_else(|| files.write("empty.config", ""))),
        toml_config: Some(toml.unwrap_or_else(|| files.write("empty.toml", ""))),
        env: Vec::new(),
        flags: Vec::new(),
        strict: false,
    }
}

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_owned(), v.to_owned())
}

#[test]
fn defaults_equal_the_official_agent() {
    let c = Config::default();
    assert_eq!(c.cluster, "default");
    assert_eq!(c.reserved_ports, vec![22, 2375, 2376, 51678, 51679]);
    assert!(c.reserved_ports_udp.is_empty());
    assert_eq!(c.reserved_memory_mib, 0);
    assert_eq!(
        c.available_logging_drivers,
        vec!["json-file", "syslog", "awslogs", "fluentd", "none"]
    );
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/ecs-hostd"));
    assert_eq!(c.log_level, "info");
    assert!(!c.disable_privileged);
    let e = &c.engine;
    assert_eq!(e.container_stop_timeout, Duration::from_secs(30));
    assert_eq!(e.container_start_timeout, Duration::from_secs(180));
    assert_eq!(e.container_create_timeout, Duration::from_secs(240));
    assert_eq!(e.manifest_pull_timeout, Duration::from_secs(60));
    assert_eq!(e.image_pull_timeout, Duration::from_secs(7200));
    assert_eq!(e.image_pull_inactivity_timeout, Duration::from_secs(60));
    assert_eq!(e.image_pull_behavior, PullBehavior::Default);
    assert_eq!(e.task_cleanup_wait, Duration::from_secs(3 * 3600));
    assert_eq!(e.image_cleanup_interval, Duration::from_secs(1800));
    assert_eq!(e.image_minimum_cleanup_age, Duration::from_secs(3600));
    assert_eq!(e.num_images_delete_per_cycle, 5);
    assert!(!e.image_cleanup_disabled);
    assert!(!e.untracked_image_cleanup);
    assert!(e.exclude_ipv6_port_binding);
    assert!(e.task_cpu_mem_limit);
    assert_eq!(e.cgroup_cpu_period, Duration::from_millis(100));
    assert!(!c.lifecycle.spot_instance_draining);
    assert!(!c.lifecycle.warm_pools_check);
    assert_eq!(c.api_addr.to_string(), "127.0.0.1:51678");
    assert_eq!(c.metrics.namespace, "CWAgent");
    assert!(c.watchdog.enabled);
}

#[test]
fn empty_sources_give_the_defaults() {
    let f = Files::new();
    let loaded = Config::load(&opts(&f, None, None)).unwrap();
    assert_eq!(loaded.config, Config::default());
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn precedence_file_then_toml_then_env_then_flags() {
    let f = Files::new();
    let ecs = f.write(
        "ecs.config",
        "ECS_CLUSTER=from-file\nECS_RESERVED_MEMORY=100\nECS_HOSTD_DOCKER_WATCHDOG=true\nECS_CONTAINER_STOP_TIMEOUT=10s\n",
    );
    let toml = f.write(
        "config.toml",
        "[watchdog]\nenabled = false\n[metrics]\ninterval = \"30s\"\n",
    );
    let mut o = opts(&f, Some(ecs), Some(toml));
    o.env = vec![
        kv("ECS_CLUSTER", "from-env"),
        kv("ECS_HOSTD_METRICS_INTERVAL", "20s"),
        kv("PATH", "/bin"),
    ];
    o.flags = vec![kv("ECS_CLUSTER", "from-flag")];
    let c = Config::load(&o).unwrap().config;
    assert_eq!(c.cluster, "from-flag", "flags beat everything");
    assert_eq!(
        c.reserved_memory_mib, 100,
        "file value kept when nothing overrides"
    );
    assert!(!c.watchdog.enabled, "config.toml beats ecs.config");
    assert_eq!(
        c.metrics.interval,
        Duration::from_secs(20),
        "env beats config.toml"
    );
    assert_eq!(c.engine.container_stop_timeout, Duration::from_secs(10));

    o.flags.clear();
    assert_eq!(Config::load(&o).unwrap().config.cluster, "from-env");
}

#[test]
fn later_lines_win_inside_ecs_config() {
    let f = Files::new();
    let ecs = f.write("ecs.config", "ECS_CLUSTER=a\nECS_CLUSTER=b\n");
    assert_eq!(
        Config::load(&opts(&f, Some(ecs), None))
            .unwrap()
            .config
            .cluster,
        "b"
    );
}

#[test]
fn reserved_ports_replace_the_default_list() {
    let f = Files::new();
    let ecs = f.write(
        "ecs.config",
        "ECS_RESERVED_PORTS=[22,8080]\nECS_RESERVED_PORTS_UDP=[53]\n",
    );
    let c = Config::load(&opts(&f, Some(ecs), None)).unwrap().config;
    assert_eq!(c.reserved_ports, vec![22, 8080]);
    assert_eq!(c.reserved_ports_udp, vec![53]);
}

/// Every malformed-value case: in `run` a warning naming file, line and key, default kept; in
/// `check` an error with the same location.
#[test]
fn malformed_ecs_config_values_name_file_line_and_key() {
    let cases: &[(&str, &str)] = &[
        ("ECS_RESERVED_MEMORY", "lots"),
        ("ECS_RESERVED_PORTS", "22,80"),
        ("ECS_RESERVED_PORTS_UDP", "[99999]"),
        ("ECS_INSTANCE_ATTRIBUTES", "{not json"),
        ("ECS_CONTAINER_INSTANCE_TAGS", "[1]"),
        ("ECS_AVAILABLE_LOGGING_DRIVERS", "json-file"),
        ("ECS_DISABLE_PRIVILEGED", "yes"),
        ("ECS_CONTAINER_STOP_TIMEOUT", "30"),
        ("ECS_IMAGE_PULL_BEHAVIOR", "sometimes"),
        ("ECS_DYNAMIC_HOST_PORT_RANGE", "9-3"),
        ("ECS_LOGLEVEL", "loud"),
        ("ECS_DATADIR", "relative/path"),
        ("ECS_CGROUP_CPU_PERIOD", "1s"),
        ("ECS_ENGINE_AUTH_TYPE", "basic"),
        ("ECS_HOSTD_API_ADDR", "localhost"),
        ("ECS_TASK_METADATA_RPS_LIMIT", "40"),
        ("ECS_AUDIT_LOGFILE_DISABLED", "maybe"),
        ("ECS_HOSTD_TASK_ENDPOINT_ADDR", "localhost"),
    ];
    for (key, bad) in cases {
        let f = Files::new();
        let path = f.write("ecs.config", &format!("ECS_CLUSTER=x\n\n{key}={bad}\n"));
        let loaded = Config::load(&opts(&f, Some(path.clone()), None))
            .unwrap_or_else(|e| panic!("run mode must not fail on {key}={bad}: {e}"));
        assert_eq!(loaded.config.cluster, "x");
        let w = loaded
            .warnings
            .iter()
            .find(|d| d.key == *key)
            .unwrap_or_else(|| panic!("no warning for {key}={bad}: {:?}", loaded.warnings));
        assert_eq!(
            w.origin,
            Origin::EcsFile {
                path: path.clone(),
                line: 3
            }
        );
        let text = w.to_string();
        assert!(
            text.contains(&format!("{}:3: {key}: expected", path.display())),
            "{text}"
        );

        let mut strict = opts(&f, Some(path.clone()), None);
        strict.strict = true;
        match Config::load(&strict) {
            Err(ConfigError::Invalid(errs)) => {
                assert_eq!(errs.len(), 1, "{errs:?}");
                assert_eq!(errs[0].key, *key);
                assert_eq!(
                    errs[0].origin,
                    Origin::EcsFile {
                        path: path.clone(),
                        line: 3
                    }
                );
            }
            other => panic!("check mode must fail on {key}={bad}: {other:?}"),
        }
    }
}

#[test]
fn malformed_lines_are_errors_only_in_check_mode() {
    let f = Files::new();
    let path = f.write("ecs.config", "ECS_CLUSTER=x\nthis line has no equals\n");
    let loaded = Config::load(&opts(&f, Some(path.clone()), None)).unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    assert_eq!(
        loaded.warnings[0].origin,
        Origin::EcsFile {
            path: path.clone(),
            line: 2
        }
    );
    let mut strict = opts(&f, Some(path), None);
    strict.strict = true;
    assert!(matches!(Config::load(&strict), Err(ConfigError::Invalid(e)) if e.len() == 1));
}

#[test]
fn invalid_toml_is_always_an_error_with_file_line_and_key() {
    let f = Files::new();
    let toml = f.write(
        "config.toml",
        "[metrics]\nenabled = true\nprofile = \"fancy\"\n",
    );
    match Config::load(&opts(&f, None, Some(toml.clone()))) {
        Err(ConfigError::Invalid(errs)) => {
            assert_eq!(errs.len(), 1);
            assert_eq!(errs[0].key, "metrics.profile");
            assert_eq!(
                errs[0].origin,
                Origin::TomlFile {
                    path: toml.clone(),
                    line: 3
                }
            );
            assert!(errs[0].message.contains("expected cwagent, legacy or both"));
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let syntax = f.write("syntax.toml", "[metrics\n");
    assert!(matches!(
        Config::load(&opts(&f, None, Some(syntax))),
        Err(ConfigError::Invalid(e)) if matches!(&e[0].origin, Origin::TomlFile { line: 1, .. })
    ));
}

#[test]
fn every_error_is_collected_not_just_the_first() {
    let f = Files::new();
    let toml = f.write(
        "config.toml",
        "[metrics]\nprofile = \"x\"\ninterval = \"1s\"\n[watchdog]\nenabled = \"maybe\"\n",
    );
    match Config::load(&opts(&f, None, Some(toml))) {
        Err(ConfigError::Invalid(errs)) => assert_eq!(errs.len(), 3, "{errs:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_and_unsupported_keys_warn() {
    let f = Files::new();
    let ecs = f.write(
        "ecs.config",
        "ECS_NOT_A_THING=1\nECS_ENABLE_GPU_SUPPORT=true\nECS_ENABLE_TASK_IAM_ROLE=false\n",
    );
    let toml = f.write("config.toml", "[metrics]\nnot_a_thing = 1\n");
    let loaded = Config::load(&opts(&f, Some(ecs), Some(toml))).unwrap();
    let keys: Vec<_> = loaded.warnings.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "ECS_NOT_A_THING",
            "ECS_ENABLE_GPU_SUPPORT",
            "metrics.not_a_thing"
        ]
    );
    assert!(loaded.warnings[1].message.contains("not supported"));
    assert!(!loaded.config.host_nat.task_iam_role);
    assert!(loaded.config.host_nat.task_iam_role_network_host);
}

#[test]
fn below_minimum_values_are_clamped_or_defaulted_with_a_warning() {
    let f = Files::new();
    let ecs = f.write(
        "ecs.config",
        "ECS_CONTAINER_STOP_TIMEOUT=100ms\nECS_IMAGE_CLEANUP_INTERVAL=1m\nECS_ENGINE_TASK_CLEANUP_WAIT_DURATION=10ms\n",
    );
    let loaded = Config::load(&opts(&f, Some(ecs), None)).unwrap();
    let e = &loaded.config.engine;
    assert_eq!(e.container_stop_timeout, Duration::from_secs(1), "clamped");
    assert_eq!(
        e.image_cleanup_interval,
        Duration::from_secs(1800),
        "default"
    );
    assert_eq!(
        e.task_cleanup_wait,
        Duration::from_secs(3 * 3600),
        "default"
    );
    assert_eq!(loaded.warnings.len(), 3);
}

#[test]
fn explicit_missing_file_is_an_error_default_missing_is_fine() {
    let f = Files::new();
    let mut o = opts(&f, None, None);
    o.ecs_config = Some(f.missing());
    assert!(matches!(Config::load(&o), Err(ConfigError::Read { .. })));
}

#[test]
fn env_values_warn_in_run_and_fail_in_check() {
    let f = Files::new();
    let mut o = opts(&f, None, None);
    o.env = vec![kv("ECS_RESERVED_MEMORY", "-5")];
    let loaded = Config::load(&o).unwrap();
    assert_eq!(loaded.warnings[0].origin, Origin::Env);
    assert_eq!(loaded.config.reserved_memory_mib, 0);
    o.strict = true;
    assert!(Config::load(&o).is_err());
}

#[test]
fn every_setting_is_documented_in_the_readme() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    for s in SETTINGS {
        assert!(
            readme.contains(&format!("`{}`", s.key)),
            "README lacks {}",
            s.key
        );
        if let Some(t) = s.toml {
            assert!(readme.contains(&format!("`{t}`")), "README lacks {t}");
        }
    }
}

#[test]
fn every_setting_is_in_the_packaged_example_file() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/ecs.config.example"
    ))
    .expect("packaging/ecs.config.example");
    for s in SETTINGS {
        assert!(
            example.contains(&format!("#{}=", s.key)),
            "packaging/ecs.config.example lacks {}",
            s.key
        );
    }
}

/// Proxy settings from ecs.config (as the official agent's users write them) become the
/// process environment, with the metadata and credentials endpoints always direct.
#[test]
fn proxy_settings_from_ecs_config_become_the_environment_with_imds_direct() {
    let dir = tempfile::tempdir().unwrap();
    let ecs = dir.path().join("ecs.config");
    std::fs::write(
        &ecs,
        "ECS_CLUSTER=prod\nHTTP_PROXY=http://proxy.internal:3128\nNO_PROXY=.internal,169.254.169.254\n",
    )
    .unwrap();
    let o = LoadOptions {
        ecs_config: Some(ecs),
        toml_config: Some(dir.path().join("absent-ok.toml")),
        env: Vec::new(),
        flags: Vec::new(),
        strict: true,
    };
    std::fs::write(dir.path().join("absent-ok.toml"), "").unwrap();
    let c = Config::load(&o).unwrap().config;
    assert_eq!(
        c.proxy.environment(),
        vec![
            ("HTTP_PROXY", "http://proxy.internal:3128".to_owned()),
            (
                "NO_PROXY",
                ".internal,169.254.169.254,169.254.170.2".to_owned()
            ),
        ]
    );
    // No proxy configured: the environment is left alone.
    assert!(ProxyConfig::default().environment().is_empty());
    let only_no = ProxyConfig {
        no_proxy: Some("x".into()),
        ..ProxyConfig::default()
    };
    assert!(only_no.environment().is_empty());
}

#[test]
fn task_endpoint_settings() {
    let f = Files::new();
    let mut o = opts(&f, None, None);
    o.env = vec![
        kv("ECS_TASK_METADATA_RPS_LIMIT", " 10 , 20 "),
        kv("ECS_AUDIT_LOGFILE", "/var/log/ecs/audit.log"),
        kv("ECS_AUDIT_LOGFILE_DISABLED", "true"),
        kv("ECS_HOSTD_TASK_ENDPOINT_ADDR", "127.0.0.1:0"),
    ];
    let c = Config::load(&o).unwrap().config.task_endpoint;
    assert_eq!((c.rps, c.burst), (10, 20));
    assert_eq!(
        c.audit_logfile.as_deref(),
        Some(std::path::Path::new("/var/log/ecs/audit.log"))
    );
    assert!(c.audit_disabled);
    assert_eq!(c.addr.port(), 0);
    // Defaults, and any parse error keeps them (as upstream).
    let d = Config::default().task_endpoint;
    assert_eq!((d.rps, d.burst), (40, 60));
    assert_eq!(d.addr.to_string(), "127.0.0.1:51679");
    assert_eq!(d.audit_logfile, None);
    for bad in ["40", "a,b", "40,60,1", "0,60", "-1,5", ""] {
        o.env = vec![kv("ECS_TASK_METADATA_RPS_LIMIT", bad)];
        let c = Config::load(&o).unwrap().config.task_endpoint;
        assert_eq!((c.rps, c.burst), (40, 60), "{bad:?}");
    }
}
