//! `LOG_FILE`: the log written to a file and rotated daily, as the original Kube-Event did.
//! The current day's log is `LOG_FILE`; at the first line of a new day (UTC, like the log's
//! timestamps) it is renamed `LOG_FILE.YYYY-MM-DD` and only the newest `LOG_KEEP_DAYS` of
//! those are kept.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub struct RotatingFile {
    path: PathBuf,
    keep: usize,
    file: File,
    /// Days since the Unix epoch of what `file` holds.
    day: i64,
    today: Box<dyn Fn() -> i64 + Send>,
}

fn utc_day() -> i64 {
    (crate::time::now_secs() / 86_400) as i64
}

impl RotatingFile {
    pub fn open(path: &Path, keep_days: u32) -> io::Result<RotatingFile> {
        Self::with_clock(path, keep_days, Box::new(utc_day))
    }

    fn with_clock(
        path: &Path,
        keep_days: u32,
        today: Box<dyn Fn() -> i64 + Send>,
    ) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        // A log left by an earlier day is rotated now, under the day it was last written.
        let day = match std::fs::metadata(path).and_then(|m| m.modified()) {
            Ok(t) => t
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| (d.as_secs() / 86_400) as i64)
                .unwrap_or(0),
            Err(_) => today(),
        };
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut f = RotatingFile {
            path: path.to_path_buf(),
            keep: keep_days as usize,
            file,
            day,
            today,
        };
        f.rotate_if_due()?;
        Ok(f)
    }

    fn rotate_if_due(&mut self) -> io::Result<()> {
        let today = (self.today)();
        if today == self.day {
            return Ok(());
        }
        let mut name = String::new();
        crate::time::format_rfc3339(self.day * 86_400 * 1_000_000_000, &mut name);
        let rotated = PathBuf::from(format!("{}.{}", self.path.display(), &name[..10]));
        self.file.flush()?;
        if std::fs::metadata(&self.path)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
        {
            std::fs::rename(&self.path, &rotated)?;
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.day = today;
        self.prune();
        Ok(())
    }

    /// Keeps the newest `keep` rotated files.
    fn prune(&self) {
        let (Some(dir), Some(base)) = (self.path.parent(), self.path.file_name()) else {
            return;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let prefix = format!("{}.", base.to_string_lossy());
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut rotated: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| {
                n.strip_prefix(&prefix).is_some_and(|d| {
                    d.len() == 10 && d.bytes().all(|b| b.is_ascii_digit() || b == b'-')
                })
            })
            .collect();
        rotated.sort();
        let excess = rotated.len().saturating_sub(self.keep);
        for old in &rotated[..excess] {
            let _ = std::fs::remove_file(dir.join(old));
        }
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A failed rotation must not stop logging: keep writing to the current file.
        let _ = self.rotate_if_due();
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    #[test]
    fn rotates_daily_and_keeps_the_newest_files() {
        let t = crate::testutil::TempDir::new("logfile");
        let path = t.join("logs/kube-event.log");
        let day = Arc::new(AtomicI64::new(20_000)); // 2024-10-04
        let d = day.clone();
        let mut f =
            RotatingFile::with_clock(&path, 2, Box::new(move || d.load(Ordering::SeqCst))).unwrap();
        // The file was just created today: nothing to rotate.
        writeln!(f, "day 0").unwrap();
        for i in 1..=4 {
            day.store(20_000 + i, Ordering::SeqCst);
            writeln!(f, "day {i}").unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(t.join("logs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "kube-event.log",
                "kube-event.log.2024-10-06",
                "kube-event.log.2024-10-07"
            ]
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "day 4\n");
        assert_eq!(
            std::fs::read_to_string(t.join("logs/kube-event.log.2024-10-07")).unwrap(),
            "day 3\n"
        );
    }
}
