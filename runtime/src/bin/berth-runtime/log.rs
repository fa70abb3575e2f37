//! The runtime's log, as runc writes it: to `--log` (appended) or stderr,
//! in logrus' text format or as JSON lines `{"level","msg","time"}`, the
//! format `containerd-shim-runc-v2` reads back after a failed call.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use clap::ValueEnum;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::Layer;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// `time="…" level=… msg="…"`
    Text,
    /// `{"level":"…","msg":"…","time":"…"}`
    Json,
}

/// Installs the runtime's logger: debug and above with `debug`, else
/// warnings and errors.
pub(crate) fn init(path: Option<&Path>, format: Format, debug: bool) -> anyhow::Result<()> {
    let out: Box<dyn Write + Send> = match path {
        Some(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open the log file {}", path.display()))?,
        ),
        None => Box::new(std::io::stderr()),
    };
    let level = if debug { Level::DEBUG } else { Level::WARN };
    // libcgroups warns about every v1 controller a machine lacks, on every
    // call: only its errors unless debugging.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(level)
        .with_target(
            "libcgroups",
            if debug { Level::DEBUG } else { Level::ERROR },
        );
    let layer = LogLayer {
        format,
        out: Mutex::new(out),
    }
    .with_filter(filter);
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
        .context("cannot install the logger")
}

struct LogLayer {
    format: Format,
    out: Mutex<Box<dyn Write + Send>>,
}

impl<S: Subscriber> Layer<S> for LogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        // logrus' level names, which runc's readers expect.
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        let line = render(
            self.format,
            level,
            &fields.text(),
            &jiff::Timestamp::now().to_string(),
        );
        if let Ok(mut out) = self.out.lock() {
            // Nowhere to report a failing log write: the caller sees the exit code.
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
    }
}

/// One log line, newline included.
fn render(format: Format, level: &str, msg: &str, time: &str) -> String {
    match format {
        Format::Json => {
            let mut line =
                serde_json::json!({ "level": level, "msg": msg, "time": time }).to_string();
            line.push('\n');
            line
        }
        Format::Text => format!("time={time:?} level={level} msg={msg:?}\n"),
    }
}

/// An event's message followed by its other fields as `key=value`.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Fields {
    fn text(&self) -> String {
        if self.rest.is_empty() {
            self.message.clone()
        } else if self.message.is_empty() {
            self.rest.trim_start().to_owned()
        } else {
            format!("{}{}", self.message, self.rest)
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_carry_level_msg_and_time() {
        let line = render(
            Format::Json,
            "error",
            "container \"x\" does not exist",
            "2026-11-22T00:00:00Z",
        );
        let value: serde_json::Value = serde_json::from_str(line.trim_end()).expect("json");
        assert_eq!(value["level"], "error");
        assert_eq!(value["msg"], "container \"x\" does not exist");
        assert_eq!(value["time"], "2026-11-22T00:00:00Z");
        assert!(line.ends_with('\n'));
    }

    #[test]
    fn text_lines_quote_the_message() {
        let line = render(Format::Text, "warning", "a \"b\"", "t");
        assert_eq!(line, "time=\"t\" level=warning msg=\"a \\\"b\\\"\"\n");
    }
}
