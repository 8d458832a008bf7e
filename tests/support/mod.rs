//! Test support for kube-event's integration tests: a test PKI, a fake kube-apiserver and a
//! fake Grafana Loki over real sockets and real TLS, and a harness that runs the real binary.
//! The fakes answer like the recordings in `shared/fixtures/` (see its README).
//!
//! Each integration test file does `mod support;` and uses what it needs, hence the
//! `dead_code` allowance. Waits use a `Condvar` with a deadline and panic saying what was
//! missing; nothing here sleeps to synchronize.
#![allow(dead_code)]

pub mod apiserver;
pub mod http;
pub mod loki;
pub mod pki;
pub mod proc;
pub mod rig;
pub mod schema;
pub mod util;

#[allow(unused_imports)]
pub use apiserver::{core_event, events_v1_event, fixture, Auth, FakeApiServer, Kind};
#[allow(unused_imports)]
pub use loki::{Entry, FakeLoki};
#[allow(unused_imports)]
pub use pki::{kubeconfig_yaml, CaRef, PkiFiles, TestPki, UserAuth};
#[allow(unused_imports)]
pub use proc::{write_conf, KubeEvent, TempDir};
