//! Docker Engine API JSON as ECS renders it: the canonical spelling of its keys.
//!
//! ECS renders parts of a container definition into `dockerConfig.config` and
//! `dockerConfig.hostConfig` JSON strings, and its keys do not always match Docker's spelling
//! (`HealthCheck` for Docker's `Healthcheck`). Docker and the official agent decode them with Go's
//! case-insensitive field matching (container-features.md §0), so this module rewrites every key
//! that names a field of Docker's `Config`/`HostConfig` (and of the structures nested in them) to
//! the spelling Docker's own types use. The field lists come from bollard's types themselves, so
//! nothing is typed twice. Keys of maps (labels, sysctls, tmpfs paths, log options, ports) are
//! data, never rewritten; keys that name no field are kept as they are (Docker ignores them).
//!
//! Owns only that spelling; never decides what a field means or whether it is supported.

use serde::de::{self, Deserialize, Visitor};
use serde_json::Value;

/// Docker structures whose keys are fields (as opposed to free-form maps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The create body: `Config` plus `HostConfig` and `NetworkingConfig`.
    Config,
    /// `HostConfig`.
    HostConfig,
    /// `Config.Healthcheck`.
    Health,
    /// `HostConfig.LogConfig`.
    LogConfig,
    /// `HostConfig.RestartPolicy`.
    RestartPolicy,
    /// An element of `HostConfig.Ulimits`.
    Ulimit,
    /// An element of `HostConfig.Devices`.
    Device,
    /// An element of `HostConfig.DeviceRequests`.
    DeviceRequest,
    /// An element of `HostConfig.BlkioWeightDevice`.
    WeightDevice,
    /// An element of the `HostConfig.BlkioDevice*` throttles.
    ThrottleDevice,
    /// An element of `HostConfig.Mounts`.
    Mount,
    /// `Mount.BindOptions`.
    BindOptions,
    /// `Mount.VolumeOptions`.
    VolumeOptions,
    /// `Mount.VolumeOptions.DriverConfig`.
    DriverConfig,
    /// `Mount.TmpfsOptions`.
    TmpfsOptions,
    /// An element of a `HostConfig.PortBindings` list.
    PortBinding,
}

/// How a field's value is laid out.
enum Child {
    /// One nested structure.
    One(Kind),
    /// A list of structures.
    List(Kind),
    /// A map (free keys) of lists of structures.
    MapOfLists(Kind),
}

impl Kind {
    /// Docker's spelling of this structure's fields.
    fn fields(self) -> &'static [&'static str] {
        use bollard::models as m;
        match self {
            Kind::Config => fields_of::<m::ContainerCreateBody>(),
            Kind::HostConfig => fields_of::<m::HostConfig>(),
            Kind::Health => fields_of::<m::HealthConfig>(),
            Kind::LogConfig => fields_of::<m::HostConfigLogConfig>(),
            Kind::RestartPolicy => fields_of::<m::RestartPolicy>(),
            Kind::Ulimit => fields_of::<m::ResourcesUlimits>(),
            Kind::Device => fields_of::<m::DeviceMapping>(),
            Kind::DeviceRequest => fields_of::<m::DeviceRequest>(),
            Kind::WeightDevice => fields_of::<m::ResourcesBlkioWeightDevice>(),
            Kind::ThrottleDevice => fields_of::<m::ThrottleDevice>(),
            Kind::Mount => fields_of::<m::Mount>(),
            Kind::BindOptions => fields_of::<m::MountBindOptions>(),
            Kind::VolumeOptions => fields_of::<m::MountVolumeOptions>(),
            Kind::DriverConfig => fields_of::<m::MountVolumeOptionsDriverConfig>(),
            Kind::TmpfsOptions => fields_of::<m::MountTmpfsOptions>(),
            Kind::PortBinding => fields_of::<m::PortBinding>(),
        }
    }

    /// The structure a (canonical) field holds, when it holds one; `None` for scalars and maps.
    fn child(self, field: &str) -> Option<Child> {
        use Child::*;
        Some(match (self, field) {
            (Kind::Config, "HostConfig") => One(Kind::HostConfig),
            (Kind::Config, "Healthcheck") => One(Kind::Health),
            (Kind::HostConfig, "LogConfig") => One(Kind::LogConfig),
            (Kind::HostConfig, "RestartPolicy") => One(Kind::RestartPolicy),
            (Kind::HostConfig, "Ulimits") => List(Kind::Ulimit),
            (Kind::HostConfig, "Devices") => List(Kind::Device),
            (Kind::HostConfig, "DeviceRequests") => List(Kind::DeviceRequest),
            (Kind::HostConfig, "BlkioWeightDevice") => List(Kind::WeightDevice),
            (
                Kind::HostConfig,
                "BlkioDeviceReadBps"
                | "BlkioDeviceWriteBps"
                | "BlkioDeviceReadIOps"
                | "BlkioDeviceWriteIOps",
            ) => List(Kind::ThrottleDevice),
            (Kind::HostConfig, "Mounts") => List(Kind::Mount),
            (Kind::HostConfig, "PortBindings") => MapOfLists(Kind::PortBinding),
            (Kind::Mount, "BindOptions") => One(Kind::BindOptions),
            (Kind::Mount, "VolumeOptions") => One(Kind::VolumeOptions),
            (Kind::Mount, "TmpfsOptions") => One(Kind::TmpfsOptions),
            (Kind::VolumeOptions, "DriverConfig") => One(Kind::DriverConfig),
            _ => return None,
        })
    }
}

/// Rewrites the keys of `value`, a `kind` structure, to Docker's spelling (recursively).
pub fn canonicalize(value: &mut Value, kind: Kind) {
    let Value::Object(map) = value else { return };
    let fields = kind.fields();
    let old = std::mem::take(map);
    for (key, mut v) in old {
        let key = match fields.iter().find(|f| f.eq_ignore_ascii_case(&key)) {
            Some(f) => (*f).to_owned(),
            None => key,
        };
        match kind.child(&key) {
            Some(Child::One(k)) => canonicalize(&mut v, k),
            Some(Child::List(k)) => {
                if let Value::Array(items) = &mut v {
                    items.iter_mut().for_each(|i| canonicalize(i, k));
                }
            }
            Some(Child::MapOfLists(k)) => {
                if let Value::Object(m) = &mut v {
                    for list in m.values_mut() {
                        if let Value::Array(items) = list {
                            items.iter_mut().for_each(|i| canonicalize(i, k));
                        }
                    }
                }
            }
            None => {}
        }
        // Two spellings of one field: the later one wins, as with Go's decoder.
        map.insert(key, v);
    }
}

/// The serialised field names of a derived `Deserialize` struct, read from what it asks of a
/// deserializer (serde passes the list to `deserialize_struct`).
fn fields_of<T: Deserialize<'static>>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields read"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_lists_come_from_the_docker_types() {
        assert!(Kind::Config.fields().contains(&"Healthcheck"));
        assert!(Kind::HostConfig.fields().contains(&"CapAdd"));
        assert!(Kind::Health.fields().contains(&"StartPeriod"));
        assert!(Kind::Ulimit.fields().contains(&"Soft"));
        assert!(Kind::PortBinding.fields().contains(&"HostPort"));
    }

    #[test]
    fn ecs_spellings_become_dockers_and_map_keys_stay() {
        let mut config = json!({
            "HealthCheck": {"test": ["CMD", "true"], "INTERVAL": 1_000_000_000u64},
            "labels": {"HealthCheck": "a label, not a field", "com.example": "x"},
            "user": "1000",
            "SomethingDockerDoesNotHave": 1
        });
        canonicalize(&mut config, Kind::Config);
        assert_eq!(
            config,
            json!({
                "Healthcheck": {"Test": ["CMD", "true"], "Interval": 1_000_000_000u64},
                "Labels": {"HealthCheck": "a label, not a field", "com.example": "x"},
                "User": "1000",
                "SomethingDockerDoesNotHave": 1
            })
        );
    }

    #[test]
    fn nested_host_config_structures_are_rewritten() {
        let mut host = json!({
            "capAdd": ["NET_ADMIN"],
            "ulimits": [{"name": "nofile", "soft": 1024, "hard": 2048}],
            "logConfig": {"type": "awslogs", "config": {"awslogs-group": "g", "Mode": "x"}},
            "sysctls": {"net.core.somaxconn": "1024"},
            "tmpfs": {"/run": "rw"},
            "portBindings": {"80/tcp": [{"hostIp": "", "hostPort": "8080"}]},
            "mounts": [{"type": "volume", "volumeOptions": {"driverConfig": {"name": "local"}}}]
        });
        canonicalize(&mut host, Kind::HostConfig);
        assert_eq!(
            host,
            json!({
                "CapAdd": ["NET_ADMIN"],
                "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048}],
                "LogConfig": {"Type": "awslogs", "Config": {"awslogs-group": "g", "Mode": "x"}},
                "Sysctls": {"net.core.somaxconn": "1024"},
                "Tmpfs": {"/run": "rw"},
                "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]},
                "Mounts": [{"Type": "volume", "VolumeOptions": {"DriverConfig": {"Name": "local"}}}]
            })
        );
    }
}
