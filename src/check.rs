//! `kube-event --check`: tries everything kube-event needs, once, and prints one line per
//! check with OK or FAIL and, for a failure, what to do about it. Nothing is shipped and no
//! state is changed: the Loki check pushes an empty request, which Loki answers without
//! storing anything.

use std::io::Write;

use crate::config::Config;
use crate::kube;
use crate::loki;

struct Report<'a> {
    out: &'a mut dyn Write,
    failed: usize,
}

impl Report<'_> {
    fn ok(&mut self, what: &str, detail: &str) {
        let _ = writeln!(self.out, "OK    {what}: {detail}");
    }

    fn fail(&mut self, what: &str, detail: &str, fix: &str) {
        self.failed += 1;
        let _ = writeln!(self.out, "FAIL  {what}: {detail}\n      fix: {fix}");
    }
}

/// Runs every check, writing the report to `out`. Returns whether all passed.
pub fn run(config: &Config, out: &mut dyn Write) -> bool {
    let mut r = Report { out, failed: 0 };
    r.ok(
        "config",
        &config
            .file
            .as_ref()
            .map(|p| format!("{} is valid", p.display()))
            .unwrap_or_else(|| "no file; defaults and environment are valid".into()),
    );
    check_cluster(config, &mut r);
    check_loki(config, &mut r);
    check_data_dir(config, &mut r);
    let _ = writeln!(
        r.out,
        "{}",
        if r.failed == 0 {
            "all checks passed".to_string()
        } else {
            format!("{} check(s) failed", r.failed)
        }
    );
    r.failed == 0
}

fn check_cluster(config: &Config, r: &mut Report<'_>) {
    let access = match kube::kubeconfig::resolve_from_env(
        config.kubeconfig.as_deref(),
        config.kube_context.as_deref(),
    ) {
        Ok(a) => a,
        Err(e) => {
            r.fail(
                "cluster access",
                &e.to_string(),
                "set KUBECONFIG in kube-event.conf to a kubeconfig file, or run kube-event in a pod \
                 with a service account (README.md, Access to the cluster)",
            );
            return;
        }
    };
    r.ok(
        "cluster access",
        &format!(
            "{}; server {}; user {} ({})",
            access.source,
            access.server,
            access.user,
            access.credentials.describe()
        ),
    );
    let client = match kube::client::Client::new(access) {
        Ok(c) => c,
        Err(e) => {
            r.fail(
                "cluster TLS",
                &e,
                "check certificate-authority and the client certificate and key",
            );
            return;
        }
    };
    let rv = match client.list_first("/api/v1/events") {
        Ok((n, rv)) => {
            r.ok(
                "list events",
                &format!("allowed ({n} on the first page of 1; resourceVersion {rv})"),
            );
            rv
        }
        Err(e) => {
            r.fail("list events", &e.to_string(), &kube_fix(&e));
            return;
        }
    };
    match client.watch("/api/v1/events", None, &rv, 1) {
        Ok(_) => r.ok("watch events", "a watch opened"),
        Err(e) => r.fail("watch events", &e.to_string(), &kube_fix(&e)),
    }
}

fn kube_fix(e: &kube::client::Error) -> String {
    use kube::client::Error as E;
    match e {
        E::Status { code: 401, .. } => {
            "the API server refused the credentials: renew the token or certificate (for a \
             service account: scripts/make-kubeconfig.sh)"
                .into()
        }
        E::Status { code: 403, .. } => {
            "grant get, list and watch on events at cluster scope: kubectl apply -f deploy/rbac.yaml"
                .into()
        }
        E::Status { .. } => "see the API server's answer above".into(),
        E::Transport(_) => {
            "check the server address, the network and, for a TLS error, the kubeconfig's \
             certificate-authority"
                .into()
        }
        E::Credentials(_) => "fix the token file or exec plugin named above".into(),
    }
}

fn check_loki(config: &Config, r: &mut Report<'_>) {
    let mut client = match loki::Client::new(&config.loki) {
        Ok(c) => c,
        Err(e) => {
            r.fail(
                "Loki",
                &e.to_string(),
                "set LOKI_URL (and the LOKI_* TLS and auth keys) in kube-event.conf",
            );
            return;
        }
    };
    client.set_wire(config.compression);
    let url = client.url().to_string();
    match client.probe() {
        Ok(detail) => r.ok("Loki", &format!("{url}: {detail}")),
        Err((detail, status)) => {
            let fix = match status {
                Some(401) | Some(403) => {
                    "Loki refused the credentials or tenant: check LOKI_TENANT_ID, LOKI_USERNAME, \
                     LOKI_PASSWORD(_FILE) and LOKI_BEARER_TOKEN_FILE"
                }
                Some(404) | Some(405) => {
                    "LOKI_URL does not point at the push API: give the base URL (http://loki:3100) \
                     or one ending in /loki/api/v1/push"
                }
                None => {
                    "check LOKI_URL, that Loki runs, and the network (and LOKI_CA_FILE for TLS)"
                }
                _ => "see Loki's answer above",
            };
            r.fail("Loki", &format!("{url}: {detail}"), fix);
        }
    }
}

fn check_data_dir(config: &Config, r: &mut Report<'_>) {
    let dir = &config.data_dir;
    let probe = dir.join(format!(".check-{}", std::process::id()));
    let result = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"check\n"))
        .and_then(|()| std::fs::remove_file(&probe));
    match result {
        Ok(()) => {
            let lock = std::fs::read_to_string(dir.join("lock")).unwrap_or_default();
            let note = match lock.trim() {
                "" => String::new(),
                pid if std::path::Path::new(&format!("/proc/{pid}")).exists() => {
                    format!(" (in use by kube-event pid {pid})")
                }
                _ => String::new(),
            };
            r.ok("DATA_DIR", &format!("{} is writable{note}", dir.display()))
        }
        Err(e) => r.fail(
            "DATA_DIR",
            &format!("{}: {e}", dir.display()),
            "create the folder or point DATA_DIR at a writable one",
        ),
    }
}
