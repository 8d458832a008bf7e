//! Helpers for the unit tests inside `src/` (the integration tests have `tests/support/`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A cut message's marker read back: (bytes of the message kept, bytes cut as the marker says).
pub fn cut_marker(message: &str) -> (usize, usize) {
    use crate::event::{CUT_CLOSE, CUT_OPEN};
    let kept = message.find(CUT_OPEN).expect("a cut marker");
    let cut = message[kept + CUT_OPEN.len()..]
        .strip_suffix(CUT_CLOSE)
        .expect("the marker ends the message")
        .parse()
        .expect("a number of bytes");
    (kept, cut)
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kube-event-unit-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `contents` to `name` (creating directories) and returns the path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
