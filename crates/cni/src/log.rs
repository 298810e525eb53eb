//! An optional debug log. stdout belongs to the result and the runtime may discard stderr, so
//! when `CILIATE_CNI_LOG` names a file, each invocation appends what it did there.

use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Appends lines to the log file, or does nothing when there is none.
#[derive(Debug)]
pub struct Log {
    file: Option<Mutex<File>>,
    prefix: String,
}

impl Log {
    /// A log appending to `path`, or a silent one when `path` is `None` or cannot be opened (a
    /// broken log must never fail the runtime's request).
    pub fn open(path: Option<&str>) -> Self {
        let file = path
            .filter(|p| !p.is_empty())
            .and_then(|p| OpenOptions::new().create(true).append(true).open(p).ok())
            .map(Mutex::new);
        Self {
            file,
            prefix: format!("pid={}", std::process::id()),
        }
    }

    /// Sets what every line starts with after the time, e.g. `ADD abc123/eth0`.
    pub fn set_context(&mut self, context: impl Display) {
        self.prefix = format!("pid={} {context}", std::process::id());
    }

    /// Appends one line.
    pub fn line(&self, msg: impl Display) {
        let Some(file) = &self.file else { return };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let line = format!(
            "{}.{:03} {}: {msg}\n",
            now.as_secs(),
            now.subsec_millis(),
            self.prefix
        );
        if let Ok(mut f) = file.lock() {
            // One write per line, so lines of concurrent invocations do not interleave.
            let _ = f.write_all(line.as_bytes());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn appends_lines_with_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.log");
        let mut log = Log::open(path.to_str());
        log.set_context("ADD c1/eth0");
        log.line("created lxc0");
        Log::open(path.to_str()).line("second");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("ADD c1/eth0: created lxc0"), "{text}");
        assert!(lines[1].ends_with(": second"), "{text}");
    }

    #[test]
    fn unusable_paths_are_silent() {
        Log::open(Some("/nonexistent-dir/x.log")).line("nothing happens");
        Log::open(None).line("nothing happens");
    }
}
