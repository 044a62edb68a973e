//! Tracing setup. Runtimes swallow hook output (runc shows it only on
//! failure, crun never), so the config's log file is where an operator
//! finds what a hook did; without one, logs go to stderr.

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use runtime_config::{LogConfig, LogFormat, LogLevel};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

static TO_FILE: AtomicBool = AtomicBool::new(false);

/// Whether logs go to a file, so an error line printed to stderr should
/// also be logged there (and only there: stderr must keep to one line).
pub fn to_file() -> bool {
    TO_FILE.load(Ordering::Relaxed)
}

/// Installs the global subscriber described by `log`.
pub fn init(log: &LogConfig) -> Result<(), String> {
    let writer = match &log.file {
        Some(path) => {
            let file = File::options()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            BoxMakeWriter::new(Mutex::new(file))
        }
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let level = match log.level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_max_level(level)
        .with_ansi(false)
        .with_target(false);
    let installed = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| e.to_string())?;
    TO_FILE.store(log.file.is_some(), Ordering::Relaxed);
    Ok(())
}
