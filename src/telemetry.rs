//! Logging setup, decided in one place: the systemd journal (structured fields, priorities) when
//! stderr is connected to the journal, otherwise human-readable text on stderr.
//!
//! Filter: `RUST_LOG` when set, else `ECS_LOGLEVEL` (crit, error, warn, info, debug). Never logs
//! secrets: credentials are kept out of every `Debug` output that reaches here.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Maps the official `ECS_LOGLEVEL` names to a tracing filter directive.
pub fn level_directive(ecs_loglevel: &str) -> &'static str {
    match ecs_loglevel {
        "crit" | "error" => "error",
        "warn" => "warn",
        "debug" => "debug",
        "trace" => "trace",
        _ => "info",
    }
}

/// Installs the global subscriber. Safe to call once per process; later calls are ignored.
pub fn init(ecs_loglevel: &str) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},aws_config=warn,aws_smithy_runtime=warn,hyper=warn,bollard=warn,zbus=warn",
            level_directive(ecs_loglevel)
        ))
    });
    // The websocket library dumps whole frames at debug/trace, credentials included: these
    // directives win even over RUST_LOG=trace.
    let filter = crate::ecs::acs::LOG_DIRECTIVES
        .iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, EnvFilter::add_directive);
    if systemd_journal_logger::connected_to_journal()
        && let Ok(layer) = tracing_journald_layer()
    {
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .try_init();
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Bridges tracing events to the journal through `systemd-journal-logger` (a `log` backend):
/// events are formatted with their fields into the message and sent with the right priority.
fn tracing_journald_layer() -> Result<JournalLayer, std::io::Error> {
    let logger =
        systemd_journal_logger::JournalLog::new()?.with_syslog_identifier("ecs-hostd".to_owned());
    Ok(JournalLayer { logger })
}

struct JournalLayer {
    logger: systemd_journal_logger::JournalLog,
}

struct FieldText(String);

impl tracing::field::Visit for FieldText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?} "));
        } else {
            self.0.push_str(&format!("{}={value:?} ", field.name()));
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value} "));
        } else {
            self.0.push_str(&format!("{}={value} ", field.name()));
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for JournalLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        use log::Log;
        let meta = event.metadata();
        let level = match *meta.level() {
            tracing::Level::ERROR => log::Level::Error,
            tracing::Level::WARN => log::Level::Warn,
            tracing::Level::INFO => log::Level::Info,
            tracing::Level::DEBUG => log::Level::Debug,
            tracing::Level::TRACE => log::Level::Trace,
        };
        let mut text = FieldText(String::new());
        event.record(&mut text);
        self.logger.log(
            &log::Record::builder()
                .level(level)
                .target(meta.target())
                .args(format_args!("{}", text.0.trim_end()))
                .build(),
        );
    }
}
