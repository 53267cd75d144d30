//! Fuzzes the ACS frame decoder (`src/ecs/acs/messages.rs`): any bytes, as text, must decode
//! or fail with an error, never panic; a decoded payload's tasks must convert for the engine;
//! every outbound frame must encode. Seeds: `tests/data/acs/messages/`.

#![no_main]

#[path = "../../src/ecs/acs/messages.rs"]
#[allow(dead_code)]
mod messages;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = messages::decode_connect_error(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match messages::decode(text) {
        Ok(messages::Inbound::Payload(p)) => {
            for t in &p.tasks {
                let v = t.without_credentials();
                // Of each credential set only the role ARN and the credentials id reach the
                // engine: never a key, a token or an expiration.
                for role in ["roleCredentials", "executionRoleCredentials"] {
                    if let Some(c) = v.get(role) {
                        let keys: Vec<&String> = c.as_object().unwrap().keys().collect();
                        assert!(
                            keys.iter()
                                .all(|k| *k == "roleArn" || *k == "credentialsId"),
                            "{keys:?}"
                        );
                    }
                }
            }
        }
        Ok(other) => {
            let _ = other.kind();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
