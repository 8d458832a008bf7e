//! The documented shape of what kube-event ships, shared by the tests that check it.

/// Keys of the JSON line (README, "What is shipped").
pub const LINE_KEYS: &[&str] = &[
    "time",
    "type",
    "reason",
    "namespace",
    "kind",
    "name",
    "field_path",
    "message",
    "count",
    "first_seen",
    "component",
    "host",
    "event_uid",
    "event_name",
    "object_uid",
];
