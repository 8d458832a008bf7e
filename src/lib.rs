//! kube-event (skeleton)
pub mod base64;
pub mod kube;
pub mod event;
pub mod time;
pub mod batch;
pub mod config;
