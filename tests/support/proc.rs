//! Running the real `kube-event` binary the way an operator would: a config file, a clean
//! environment (nothing from the developer's shell leaks in: no KUBECONFIG, no in-cluster
//! variables, HOME pointing at an empty directory), stdout and stderr captured to files that
//! can be read while it runs, signals sent with `kill`, and waits that end on a condition
//! with a deadline instead of sleeping. Also `TempDir`, used by every test.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::util::Shared;

/// The flag `spawn` passes the config file with. Change here if the CLI names it otherwise.
pub const CONFIG_FLAG: &str = "--config";

/// The config file name `write_conf` writes.
pub const CONF_FILE: &str = "kube-event.conf";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed on Drop unless the test panicked
/// (then it is kept, and its path printed, for a post-mortem).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "kube-event-test-{}-{}-{nanos}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {path:?}: {e}"));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `text` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.join(name);
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
        path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed; keeping {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Writes `KEY=VALUE` lines to `dir/kube-event.conf`.
pub fn write_conf(dir: &Path, pairs: &[(&str, &str)]) -> PathBuf {
    let text: String = pairs.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let path = dir.join(CONF_FILE);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
    path
}

#[derive(Default)]
struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stdout_eof: bool,
    stderr_eof: bool,
    exit: Option<ExitStatus>,
}

/// A running `kube-event`. Killed (SIGKILL) on Drop if still running.
pub struct KubeEvent {
    pid: u32,
    out: Arc<Shared<Output>>,
    dir: TempDir,
}

impl KubeEvent {
    /// Runs `kube-event --config <conf> <args...>` with the conf file's directory as the
    /// working directory and only `envs` (plus PATH, HOME=<empty dir>, RUST_BACKTRACE=1
    /// unless given) in the environment.
    pub fn spawn(conf: &Path, envs: &[(&str, &str)], args: &[&str]) -> KubeEvent {
        let conf_str = conf.to_str().expect("UTF-8 conf path");
        let mut all: Vec<&str> = vec![CONFIG_FLAG, conf_str];
        all.extend_from_slice(args);
        let cwd = conf.parent().unwrap_or(Path::new("."));
        KubeEvent::spawn_args(cwd, envs, &all)
    }

    /// Runs `kube-event <args...>` exactly, in `cwd`, with the same clean environment.
    pub fn spawn_args(cwd: &Path, envs: &[(&str, &str)], args: &[&str]) -> KubeEvent {
        let dir = TempDir::new();
        let home = dir.join("home");
        std::fs::create_dir_all(&home).expect("create HOME");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kube-event"));
        cmd.args(args)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", env!("CARGO_BIN_EXE_kube-event")));
        let pid = child.id();
        let out = Arc::new(Shared::new(Output::default()));

        let stdout = child.stdout.take().expect("stdout pipe");
        let stderr = child.stderr.take().expect("stderr pipe");
        spawn_reader(stdout, dir.join("stdout.txt"), out.clone(), true);
        spawn_reader(stderr, dir.join("stderr.txt"), out.clone(), false);
        let waiter_out = out.clone();
        std::thread::Builder::new()
            .name(format!("kube-event-wait-{pid}"))
            .spawn(move || {
                let status = child.wait().expect("wait for kube-event");
                waiter_out.update(|o| o.exit = Some(status));
            })
            .expect("spawn waiter");
        KubeEvent { pid, out, dir }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Directory holding stdout.txt and stderr.txt (and the empty HOME).
    pub fn output_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().stderr).into_owned()
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&self) -> Option<ExitStatus> {
        self.out.lock().exit
    }

    fn signal(&self, sig: &str) {
        if self.try_exit().is_some() {
            panic!(
                "cannot send {sig}: kube-event already exited\nstderr:\n{}",
                self.stderr_text()
            );
        }
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid);
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    pub fn sigint(&self) {
        self.signal("INT");
    }

    pub fn sigkill(&self) {
        self.signal("KILL");
    }

    /// Waits for the process to exit and for its output to be complete.
    pub fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let guard = self.out.wait_until(
            timeout,
            "kube-event to exit",
            |o| o.exit.is_some() && o.stdout_eof && o.stderr_eof,
            |o| {
                format!(
                    "exit: {:?}\nstderr:\n{}",
                    o.exit,
                    String::from_utf8_lossy(&o.stderr)
                )
            },
        );
        guard.exit.expect("exited")
    }

    /// Waits until stderr contains `needle`; returns stderr so far. Fails early if the
    /// process exits without writing it.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_stderr_where(
            &format!("{needle:?}"),
            |text| text.contains(needle),
            timeout,
        )
    }

    /// Waits until `holds` is true of stderr so far (`what` says what it waits for); returns
    /// stderr. Fails early if the process closes stderr before.
    pub fn wait_for_stderr_where(
        &self,
        what: &str,
        holds: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        let guard = self.out.wait_until(
            timeout,
            &format!("{what} on kube-event's stderr"),
            |o| o.stderr_eof || holds(&String::from_utf8_lossy(&o.stderr)),
            |o| {
                format!(
                    "exit: {:?}\nstderr:\n{}",
                    o.exit,
                    String::from_utf8_lossy(&o.stderr)
                )
            },
        );
        let text = String::from_utf8_lossy(&guard.stderr).into_owned();
        if !holds(&text) {
            drop(guard);
            panic!("kube-event closed stderr without writing {what}; stderr:\n{text}");
        }
        text
    }

    /// Waits until stdout has at least `n` complete lines; returns all complete lines.
    pub fn wait_for_stdout_lines(&self, n: usize, timeout: Duration) -> Vec<String> {
        let guard = self.out.wait_until(
            timeout,
            &format!("{n} lines on kube-event's stdout"),
            |o| o.stdout.iter().filter(|b| **b == b'\n').count() >= n || o.stdout_eof,
            |o| {
                format!(
                    "exit: {:?}\nstdout:\n{}\nstderr:\n{}",
                    o.exit,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            },
        );
        let text = String::from_utf8_lossy(&guard.stdout).into_owned();
        let lines: Vec<String> = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| l.trim_end_matches('\n').to_string())
            .collect();
        if lines.len() < n {
            let stderr = String::from_utf8_lossy(&guard.stderr).into_owned();
            drop(guard);
            panic!(
                "kube-event closed stdout after {} of {n} lines; stdout:\n{text}\nstderr:\n{stderr}",
                lines.len()
            );
        }
        lines
    }
}

impl Drop for KubeEvent {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = Command::new("kill")
                .args(["-KILL".to_string(), self.pid.to_string()])
                .status();
            let guard = self.out.lock();
            let _ = self
                .out
                .cond
                .wait_timeout_while(guard, Duration::from_secs(10), |o| o.exit.is_none());
        }
        if std::thread::panicking() {
            eprintln!(
                "kube-event (pid {}) stderr:\n{}",
                self.pid,
                self.stderr_text()
            );
        }
    }
}

fn spawn_reader(
    mut pipe: impl Read + Send + 'static,
    file: PathBuf,
    out: Arc<Shared<Output>>,
    is_stdout: bool,
) {
    std::thread::Builder::new()
        .name("kube-event-output".into())
        .spawn(move || {
            let mut f = std::fs::File::create(&file).ok();
            let mut buf = [0u8; 8192];
            loop {
                let n = pipe.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                if let Some(f) = f.as_mut() {
                    let _ = std::io::Write::write_all(f, &buf[..n]);
                }
                out.update(|o| {
                    if is_stdout {
                        o.stdout.extend_from_slice(&buf[..n]);
                    } else {
                        o.stderr.extend_from_slice(&buf[..n]);
                    }
                });
            }
            out.update(|o| {
                if is_stdout {
                    o.stdout_eof = true;
                } else {
                    o.stderr_eof = true;
                }
            });
        })
        .expect("spawn output reader");
}
