//! Everything that knows about the API server: where it is and how to authenticate
//! (`kubeconfig`, `auth`), and the HTTP calls themselves (`client`). Only this module sees
//! tokens, certificates and keys.

pub(crate) mod auth;
pub(crate) mod client;
pub(crate) mod kubeconfig;
