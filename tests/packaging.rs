//! The release tarball's scripts, run the way an operator runs them: `start.sh` and `stop.sh`
//! in a copy of the tarball's layout (the real binary, the real scripts, a kube-event.conf
//! pointing at the fake API server and fake Loki), called from another directory; and
//! `scripts/make-kubeconfig.sh` with a stand-in `kubectl`, whose kubeconfig the real binary
//! then uses. Waits end on a condition with a deadline; nothing sleeps to synchronize.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kube_event::config::KEYS;
use support::util::{now_nanos, rfc3339_secs};
use support::*;

const T: Duration = Duration::from_secs(15);
const TOKEN: &str = "packaging-test-token";
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The release tarball's folder, holding copies of the binary and the scripts.
fn tarball_layout() -> TempDir {
    let dir = TempDir::new();
    let copy = |from: &Path, to: &str| {
        std::fs::copy(from, dir.join(to))
            .unwrap_or_else(|e| panic!("copy {} to {to}: {e}", from.display()));
    };
    copy(Path::new(env!("CARGO_BIN_EXE_kube-event")), "kube-event");
    copy(&Path::new(ROOT).join("start.sh"), "start.sh");
    copy(&Path::new(ROOT).join("stop.sh"), "stop.sh");
    dir
}

/// Runs `script args...` in `cwd` with a clean environment (PATH, an empty HOME, `envs`),
/// and returns its output; fails if it takes longer than `T`.
fn run(script: &Path, cwd: &Path, envs: &[(&str, &str)], args: &[&str]) -> Output {
    let home = cwd.join(".home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = Command::new(script);
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let what = format!("{} {args:?}", script.display());
    std::thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    match rx.recv_timeout(T) {
        Ok(out) => out.unwrap_or_else(|e| panic!("run {what}: {e}")),
        Err(_) => panic!("{what} did not finish within {T:?}"),
    }
}

fn refs<'a>(envs: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    envs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// True when `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Kills what start.sh started if the test ends early, so that no kube-event outlives it.
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            if alive(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

fn event(api: &FakeApiServer, name: &str, message: &str) {
    let ts = rfc3339_secs(now_nanos());
    api.create(core_event("demo", name, "BackOff", message, 1, &ts));
}

fn has_event(entries: &[Entry], name: &str) -> bool {
    entries
        .iter()
        .any(|e| e.line.contains(&format!("\"event_name\":\"{name}\"")))
}

#[test]
fn start_sh_runs_kube_event_detached_and_stop_sh_stops_it_after_the_final_push() {
    let pki = TestPki::new();
    let api = FakeApiServer::start(&pki, Auth::Token(TOKEN.into()));
    let loki = FakeLoki::start();
    let pkg = tarball_layout();
    let elsewhere = TempDir::new();
    let _guard = KillOnDrop(pkg.join("kube-event.pid"));

    pkg.write(
        "kubeconfig.yaml",
        &kubeconfig_yaml(&api.url(), CaRef::Data(&pki.ca_pem), UserAuth::Token(TOKEN)),
    );
    // Nothing is due before an hour. A batch filling at BATCH_MAX_BYTES an hour or faster
    // (judged over its first 0.1 s: ~2.9 KB with 100 MiB) is a burst's, pushed once the
    // stream pauses for 0.1 s (queue::QUIET): the big event goes so, while kube-event runs.
    // The small one, watched after it, is a trickle's batch: it waits for the final push at
    // SIGTERM, however slowly the test runs (a batch after a full one would be a burst's too).
    let log_file = KEYS.contains(&"LOG_FILE");
    let mut conf = format!(
        "LOKI_URL={}\nKUBECONFIG=kubeconfig.yaml\nPUSH_INTERVAL_SECONDS=3600\n\
         BATCH_MAX_BYTES=104857600\nLOG_LEVEL=debug\n",
        loki.url()
    );
    if log_file {
        conf.push_str("LOG_FILE=logs/kube-event.log\n");
    }
    pkg.write("kube-event.conf", &conf);
    let log = pkg.join(if log_file {
        "logs/kube-event.log"
    } else {
        "logs/kube-event.out"
    });
    event(&api, "a-big.1", &"x".repeat(6000));

    let envs = [("START_TIMEOUT", "12"), ("STOP_TIMEOUT", "12")];
    let start = pkg.join("start.sh");
    let stop = pkg.join("stop.sh");

    let out = run(&start, elsewhere.path(), &envs, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "start.sh failed: {stdout}\n{stderr}");
    let pid: u32 = std::fs::read_to_string(pkg.join("kube-event.pid"))
        .expect("kube-event.pid")
        .trim()
        .parse()
        .expect("a pid in kube-event.pid");
    assert!(
        stdout.contains(&format!("kube-event is up (pid {pid})")),
        "start.sh should say it is up with its pid: {stdout}"
    );
    assert!(
        stdout.contains(&format!("log: {}", log.display())),
        "start.sh should say where the log is ({}): {stdout}",
        log.display()
    );
    assert!(alive(pid), "kube-event (pid {pid}) is not running");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        cmdline.starts_with(b"./kube-event\0--config\0./kube-event.conf\0"),
        "{:?}",
        String::from_utf8_lossy(&cmdline)
    );
    // Detached: a session of its own.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    assert_eq!(
        fields[3],
        pid.to_string(),
        "kube-event should lead its own session"
    );
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("kube-event is up"));

    // The big event reaches Loki while it runs; the small one waits for the final push.
    let entries = loki.wait_for_entries(1, T);
    assert!(has_event(&entries, "a-big.1"), "{:?}", entries);
    event(&api, "b-small.1", "small");
    // The watch ends after the small event's frame: watching again from its resourceVersion
    // means kube-event has queued it.
    let rv = api.resource_version();
    api.end_watches();
    api.wait_for_requests(
        |reqs| {
            reqs.iter()
                .any(|r| r.is_watch() && r.q("resourceVersion") == Some(rv.as_str()))
        },
        T,
    );
    assert!(!has_event(&loki.entries(), "b-small.1"));

    // A second start is refused while the first runs.
    let out = run(&start, elsewhere.path(), &envs, &[]);
    let (stdout2, stderr2) = text(&out);
    assert!(
        !out.status.success(),
        "a second start.sh succeeded: {stdout2}"
    );
    assert!(
        stderr2.contains(&format!("already running (pid {pid})")),
        "{stdout2}\n{stderr2}"
    );
    assert!(alive(pid));
    assert_eq!(
        std::fs::read_to_string(pkg.join("kube-event.pid"))
            .unwrap()
            .trim(),
        pid.to_string()
    );

    // stop.sh: SIGTERM, the queued event is pushed, the pid file goes.
    let out = run(&stop, elsewhere.path(), &envs, &[]);
    let (stdout3, stderr3) = text(&out);
    assert!(out.status.success(), "stop.sh failed: {stdout3}\n{stderr3}");
    assert!(
        stdout3.contains(&format!("stopping kube-event (pid {pid})")),
        "{stdout3}"
    );
    assert!(stdout3.contains("kube-event stopped"), "{stdout3}");
    assert!(
        !stderr3.contains("SIGKILL"),
        "stop.sh had to kill: {stderr3}"
    );
    assert!(!alive(pid), "kube-event still runs after stop.sh");
    assert!(!pkg.join("kube-event.pid").exists());
    assert!(
        has_event(&loki.entries(), "b-small.1"),
        "the queued event was not pushed at SIGTERM: {:?}",
        loki.entries()
    );
    assert!(loki.duplicates().is_empty());

    // Nothing runs now: stop.sh says so and succeeds.
    let out = run(&stop, elsewhere.path(), &envs, &[]);
    let (stdout4, stderr4) = text(&out);
    assert!(out.status.success(), "{stdout4}\n{stderr4}");
    assert!(stdout4.contains("not running"), "{stdout4}");
}

#[test]
fn start_sh_with_a_bad_config_fails_and_prints_the_error() {
    let pkg = tarball_layout();
    let elsewhere = TempDir::new();
    let _guard = KillOnDrop(pkg.join("kube-event.pid"));
    pkg.write(
        "kube-event.conf",
        "LOKI_URL=http://127.0.0.1:9\nPUSH_INTERVAL_SECONDS=abc\n",
    );
    // A pid file left by a crash, naming a process that is not kube-event (this test).
    pkg.write("kube-event.pid", &format!("{}\n", std::process::id()));

    let out = run(&pkg.join("start.sh"), elsewhere.path(), &[], &[]);
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success(),
        "start.sh succeeded: {stdout}\n{stderr}"
    );
    assert!(stdout.contains("removing stale kube-event.pid"), "{stdout}");
    assert!(stderr.contains("exited with code 2"), "{stderr}");
    assert!(
        stderr.contains("kube-event.conf:2: PUSH_INTERVAL_SECONDS"),
        "start.sh should show the config error: {stderr}"
    );
    assert!(!pkg.join("kube-event.pid").exists());

    // stop.sh with a stale pid file: removes it, says nothing runs.
    pkg.write("kube-event.pid", &format!("{}\n", std::process::id()));
    let out = run(&pkg.join("stop.sh"), elsewhere.path(), &[], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("not running"), "{stdout}");
    assert!(!pkg.join("kube-event.pid").exists());
}

/// A `kubectl` that answers the calls make-kubeconfig.sh makes, from environment variables.
const FAKE_KUBECTL: &str = r#"#!/usr/bin/env bash
set -euo pipefail
echo "$*" >>"$KUBECTL_LOG"
case "$*" in
  "get serviceaccount kube-event -n kube-event" | "get clusterrolebinding kube-event")
    [[ -z ${NO_RBAC:-} ]] || { echo "Error from server (NotFound)" >&2; exit 1; } ;;
  "config view --raw --minify -o jsonpath={.clusters[0].name}") printf 'test-cluster' ;;
  "config view --raw --minify -o jsonpath={.clusters[0].cluster.server}") printf '%s' "$SERVER" ;;
  "config view --raw --minify -o jsonpath={.clusters[0].cluster.certificate-authority-data}") ;;
  "config view --raw --minify -o jsonpath={.clusters[0].cluster.certificate-authority}") printf '%s' "$CA_FILE" ;;
  "config view --raw --minify -o jsonpath={.clusters[0].cluster.insecure-skip-tls-verify}") ;;
  "create token kube-event -n kube-event --duration=8760h") echo "$JWT" ;;
  *) echo "fake kubectl: unexpected: $*" >&2; exit 3 ;;
esac
"#;

/// header.payload.signature with payload {"exp":1893456000,"sub":"system:serviceaccount:kube-event:kube-event"}.
const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjE4OTM0NTYwMDAsInN1YiI6InN5c3RlbTpzZXJ2aWNlYWNjb3VudDprdWJlLWV2ZW50Omt1YmUtZXZlbnQifQ.c2ln";

#[test]
fn make_kubeconfig_writes_a_kubeconfig_kube_event_can_use() {
    use std::os::unix::fs::PermissionsExt;

    let pki = TestPki::new();
    let api = FakeApiServer::start(&pki, Auth::Token(JWT.into()));
    let dir = TempDir::new();
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let kubectl = dir.write("bin/kubectl", FAKE_KUBECTL);
    std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ca = dir.write("ca.crt", &pki.ca_pem);
    let log = dir.join("kubectl.log");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = Path::new(ROOT).join("scripts/make-kubeconfig.sh");
    let envs: Vec<(&str, String)> = vec![
        ("PATH", path),
        ("KUBECTL_LOG", log.display().to_string()),
        ("SERVER", api.url()),
        ("CA_FILE", ca.display().to_string()),
        ("JWT", JWT.to_string()),
    ];
    let mut no_rbac = envs.clone();
    no_rbac.push(("NO_RBAC", "1".to_string()));

    // Without deploy/rbac.yaml applied, it says what to apply.
    let out = run(&script, dir.path(), &refs(&no_rbac), &[]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("kubectl apply -f deploy/rbac.yaml"),
        "{stderr}"
    );
    assert!(!dir.join("kube-event.kubeconfig").exists());

    let out = run(&script, dir.path(), &refs(&envs), &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let written = dir.join("kube-event.kubeconfig");
    let mode = std::fs::metadata(&written).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the kubeconfig holds a token");
    let real = std::fs::canonicalize(&written).unwrap();
    assert!(
        stdout.contains(&format!("KUBECONFIG={}", real.display())),
        "{stdout}"
    );
    assert!(stdout.contains("expires 2030-01-01 00:00 UTC"), "{stdout}");
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(
        calls.contains("create token kube-event -n kube-event --duration=8760h"),
        "{calls}"
    );

    // The real binary lists events with it.
    let ts = rfc3339_secs(now_nanos());
    api.create(core_event("demo", "web-0.k", "BackOff", "restart", 1, &ts));
    let conf = write_conf(dir.path(), &[("KUBECONFIG", "kube-event.kubeconfig")]);
    let ke = KubeEvent::spawn(&conf, &[], &["--stdout"]);
    let lines = ke.wait_for_stdout_lines(1, T);
    assert!(lines[0].contains("\"event_name\":\"web-0.k\""), "{lines:?}");
    assert!(api
        .requests()
        .iter()
        .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {JWT}")[..])));
}
