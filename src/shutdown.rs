//! The stop flag shared by every thread, with sleeps that end early when it is set, so that
//! no backoff ever delays a shutdown.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct Shutdown(Arc<(Mutex<bool>, Condvar)>);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trigger(&self) {
        let (lock, cv) = &*self.0;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }

    pub fn is_set(&self) -> bool {
        *self.0 .0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps for `d` unless shutdown comes first. Returns true if it slept the whole time.
    pub fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let (lock, cv) = &*self.0;
        let mut stop = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *stop {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            stop = cv
                .wait_timeout(stop, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_ends_when_triggered() {
        let s = Shutdown::new();
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.sleep(Duration::from_secs(60)));
        s.trigger();
        assert!(!t.join().unwrap());
        assert!(s.is_set());
        assert!(!s.sleep(Duration::from_secs(60)));
    }

    #[test]
    fn sleep_runs_its_course_otherwise() {
        assert!(Shutdown::new().sleep(Duration::from_millis(1)));
    }
}
