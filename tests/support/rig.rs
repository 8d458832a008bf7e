//! The usual test setup: a fake cluster (token auth) and a fake Loki, a kubeconfig for the
//! first and a kube-event.conf for both, in a temporary folder.

use std::path::PathBuf;
use std::time::Duration;

use super::{
    kubeconfig_yaml, write_conf, Auth, CaRef, FakeApiServer, FakeLoki, KubeEvent, TempDir, TestPki,
    UserAuth,
};

/// The bearer token the fake API server accepts.
pub const TOKEN: &str = "s3cr3t-token-value";

pub struct Rig {
    pub pki: TestPki,
    pub api: FakeApiServer,
    pub loki: FakeLoki,
    pub dir: TempDir,
}

impl Rig {
    pub fn new() -> Rig {
        let pki = TestPki::new();
        let api = FakeApiServer::start(&pki, Auth::Token(TOKEN.into()));
        let loki = FakeLoki::start();
        let dir = TempDir::new();
        let rig = Rig {
            pki,
            api,
            loki,
            dir,
        };
        rig.kubeconfig(UserAuth::Token(TOKEN));
        rig
    }

    /// (Re)writes `kubeconfig.yaml` for the fake API server with `user`'s credentials.
    pub fn kubeconfig(&self, user: UserAuth) {
        let yaml = kubeconfig_yaml(&self.api.url(), CaRef::Data(&self.pki.ca_pem), user);
        self.dir.write("kubeconfig.yaml", &yaml);
    }

    /// kube-event.conf with the rig's defaults (Loki, kubeconfig, a 1 s push interval, debug
    /// logs), then `extra` (later keys win).
    pub fn conf(&self, extra: &[(&str, &str)]) -> PathBuf {
        let loki = self.loki.url();
        let mut pairs: Vec<(&str, &str)> = vec![
            ("LOKI_URL", &loki),
            ("KUBECONFIG", "kubeconfig.yaml"),
            ("PUSH_INTERVAL_SECONDS", "1"),
            ("LOG_LEVEL", "debug"),
        ];
        for (k, v) in extra {
            pairs.retain(|(pk, _)| pk != k);
            pairs.push((k, v));
        }
        write_conf(self.dir.path(), &pairs)
    }

    pub fn start(&self, extra: &[(&str, &str)]) -> KubeEvent {
        KubeEvent::spawn(&self.conf(extra), &[], &[])
    }

    /// Starts kube-event and waits until it watches (a watch request beyond those already
    /// made): then it is past its startup, whether it resumed or listed.
    pub fn start_watching(&self, extra: &[(&str, &str)]) -> KubeEvent {
        let before = self.watch_requests();
        let ke = self.start(extra);
        self.api.wait_for_requests(
            |r| r.iter().filter(|r| r.is_watch()).count() > before,
            Duration::from_secs(20),
        );
        ke
    }

    pub fn watch_requests(&self) -> usize {
        self.api.requests().iter().filter(|r| r.is_watch()).count()
    }

    /// The default DATA_DIR: `data` next to the conf.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn spool(&self) -> PathBuf {
        self.data().join("spool")
    }
}

impl Default for Rig {
    fn default() -> Self {
        Rig::new()
    }
}
