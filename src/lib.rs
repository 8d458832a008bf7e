//! kube-event (skeleton)
pub mod base64;
pub mod kube;
