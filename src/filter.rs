//! What is shipped: the filter keys (`NAMESPACES`, `TYPES`, `REASONS`, `KINDS`,
//! `COMPONENTS`, their `EXCLUDE_` twins, `MIN_COUNT`), applied to every occurrence, and the
//! part of them the API server can do itself (a namespaced path, a `fieldSelector`), so that
//! fewer events cross the network. The client-side check always runs: a push-down only saves
//! work, it never decides alone.

use crate::config;
use crate::event::Event;

pub struct Filter {
    cfg: config::Filters,
}

/// `*` matches any run of characters, `?` any one character; everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

fn plain(pattern: &str) -> bool {
    !pattern.contains(['*', '?'])
}

/// An include list passes everything when empty.
fn included(list: &[String], value: &str) -> bool {
    list.is_empty() || list.iter().any(|p| glob(p, value))
}

fn excluded(list: &[String], value: &str) -> bool {
    list.iter().any(|p| glob(p, value))
}

/// Where and how to list and watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `""` for the whole cluster, else the namespace; keys the resume point in the journal.
    pub key: String,
    /// `/api/v1/events` or `/api/v1/namespaces/NS/events`.
    pub path: String,
    /// The `fieldSelector` query value (unescaped for the URL), if any.
    pub field_selector: Option<String>,
}

impl Filter {
    pub fn new(cfg: config::Filters) -> Self {
        Filter { cfg }
    }

    pub fn deduplicate(&self) -> bool {
        self.cfg.deduplicate
    }

    /// Whether the occurrence `count` of `ev` is to be shipped.
    pub fn pass(&self, ev: &Event<'_>, count: i64) -> bool {
        let c = &self.cfg;
        let ns = ev.metadata.namespace.as_deref().unwrap_or("");
        let type_ = ev.type_.as_deref().unwrap_or("");
        let reason = ev.reason.as_deref().unwrap_or("");
        let kind = ev.involved_object.kind.as_deref().unwrap_or("");
        let component = ev.component();
        count >= c.min_count
            && included(&c.namespaces, ns)
            && !excluded(&c.exclude_namespaces, ns)
            && included(&c.types, type_)
            && included(&c.reasons, reason)
            && !excluded(&c.exclude_reasons, reason)
            && included(&c.kinds, kind)
            && !excluded(&c.exclude_kinds, kind)
            && included(&c.components, component)
            && !excluded(&c.exclude_components, component)
    }

    /// The field selector the API server can apply: a single plain type, reason or kind, and
    /// plain exclusions of kinds, reasons and (cluster-wide) namespaces.
    fn field_selector(&self, cluster_wide: bool) -> Option<String> {
        let c = &self.cfg;
        let mut terms: Vec<String> = Vec::new();
        let single = |list: &[String], field: &str, terms: &mut Vec<String>| {
            if let [one] = list {
                if plain(one) {
                    terms.push(format!("{field}={}", escape(one)));
                }
            }
        };
        single(&c.types, "type", &mut terms);
        single(&c.reasons, "reason", &mut terms);
        single(&c.kinds, "involvedObject.kind", &mut terms);
        let mut not = |list: &[String], field: &str| {
            for v in list.iter().filter(|v| plain(v)) {
                terms.push(format!("{field}!={}", escape(v)));
            }
        };
        not(&c.exclude_kinds, "involvedObject.kind");
        not(&c.exclude_reasons, "reason");
        if cluster_wide {
            not(&c.exclude_namespaces, "metadata.namespace");
        }
        (!terms.is_empty()).then(|| terms.join(","))
    }

    /// The scope to watch: one namespace when `NAMESPACES` names exactly one plain namespace,
    /// else the whole cluster.
    pub fn scope(&self) -> Scope {
        match self.cfg.namespaces.as_slice() {
            [one] if plain(one) => self.namespace_scope(one),
            _ => Scope {
                key: String::new(),
                path: "/api/v1/events".into(),
                field_selector: self.field_selector(true),
            },
        }
    }

    /// One scope per namespace, when `NAMESPACES` names only plain namespaces (the fallback
    /// when listing across the cluster is forbidden).
    pub fn namespace_scopes(&self) -> Option<Vec<Scope>> {
        let ns = &self.cfg.namespaces;
        if ns.is_empty() || !ns.iter().all(|n| plain(n)) {
            return None;
        }
        Some(ns.iter().map(|n| self.namespace_scope(n)).collect())
    }

    fn namespace_scope(&self, ns: &str) -> Scope {
        Scope {
            key: ns.to_string(),
            path: format!("/api/v1/namespaces/{ns}/events"),
            field_selector: self.field_selector(false),
        }
    }
}

/// Escapes a field-selector value as the API server expects (`\\`, `,`, `=`, `!`).
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '\\' | ',' | '=' | '!') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("kube-*", "kube-system", true),
            ("kube-*", "default", false),
            ("?od", "Pod", true),
            ("?od", "Node", false),
            ("*-system", "kube-system", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("Back?ff", "BackOff", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("", "", true),
            ("", "x", false),
            ("**", "x", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob(p, t), want, "{p:?} ~ {t:?}");
        }
    }

    fn event(
        ns: &str,
        type_: &str,
        reason: &str,
        kind: &str,
        source: &str,
        reporting: &str,
    ) -> String {
        format!(
            r#"{{"metadata":{{"uid":"u","namespace":"{ns}"}},"type":"{type_}","reason":"{reason}","involvedObject":{{"kind":"{kind}"}},"source":{{"component":"{source}"}},"reportingComponent":"{reporting}","lastTimestamp":"2026-01-01T00:00:00Z"}}"#
        )
    }

    fn cfg(f: impl FnOnce(&mut config::Filters)) -> Filter {
        let mut c = config::Filters {
            min_count: 1,
            ..Default::default()
        };
        f(&mut c);
        Filter::new(c)
    }

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_filter_key() {
        let pod_warning = event("shop", "Warning", "BackOff", "Pod", "kubelet", "");
        let node_normal = event(
            "default",
            "Normal",
            "Rebooted",
            "Node",
            "",
            "node-controller",
        );
        let table: Vec<(Filter, bool, bool)> = vec![
            (cfg(|_| {}), true, true),
            (cfg(|c| c.namespaces = v(&["shop"])), true, false),
            (cfg(|c| c.namespaces = v(&["sh*", "def?ult"])), true, true),
            (cfg(|c| c.exclude_namespaces = v(&["default"])), true, false),
            (cfg(|c| c.types = v(&["Warning"])), true, false),
            (cfg(|c| c.reasons = v(&["Back*"])), true, false),
            (
                cfg(|c| c.exclude_reasons = v(&["Rebooted", "Pulled"])),
                true,
                false,
            ),
            (cfg(|c| c.kinds = v(&["Node"])), false, true),
            (cfg(|c| c.exclude_kinds = v(&["Node"])), true, false),
            // Component: source.component, else reportingComponent.
            (cfg(|c| c.components = v(&["node-*"])), false, true),
            (cfg(|c| c.exclude_components = v(&["kubelet"])), false, true),
            (cfg(|c| c.min_count = 2), false, false),
        ];
        for (i, (f, pod, node)) in table.iter().enumerate() {
            let a = crate::scan::event(pod_warning.as_bytes()).unwrap();
            let b = crate::scan::event(node_normal.as_bytes()).unwrap();
            assert_eq!((f.pass(&a, 1), f.pass(&b, 1)), (*pod, *node), "case {i}");
        }
        let f = cfg(|c| c.min_count = 3);
        let a = crate::scan::event(pod_warning.as_bytes()).unwrap();
        assert!(!f.pass(&a, 2) && f.pass(&a, 3) && f.pass(&a, 10));
    }

    #[test]
    fn push_down_what_the_api_server_can_do() {
        assert_eq!(
            cfg(|_| {}).scope(),
            Scope {
                key: String::new(),
                path: "/api/v1/events".into(),
                field_selector: None
            }
        );
        let f = cfg(|c| {
            c.namespaces = v(&["shop"]);
            c.types = v(&["Warning"]);
            c.exclude_kinds = v(&["Node", "Lease*"]);
            c.exclude_namespaces = v(&["kube-system"]);
        });
        assert_eq!(
            f.scope(),
            Scope {
                key: "shop".into(),
                path: "/api/v1/namespaces/shop/events".into(),
                field_selector: Some("type=Warning,involvedObject.kind!=Node".into())
            }
        );
        let f = cfg(|c| {
            c.namespaces = v(&["a", "b"]);
            c.reasons = v(&["BackOff"]);
            c.exclude_reasons = v(&["x,y"]);
            c.exclude_namespaces = v(&["kube-system"]);
        });
        assert_eq!(
            f.scope().field_selector.as_deref(),
            Some("reason=BackOff,reason!=x\\,y,metadata.namespace!=kube-system")
        );
        let scopes = f.namespace_scopes().unwrap();
        assert_eq!(scopes.len(), 2);
        assert_eq!(scopes[1].path, "/api/v1/namespaces/b/events");
        assert_eq!(
            scopes[1].field_selector.as_deref(),
            Some("reason=BackOff,reason!=x\\,y")
        );
        // Globs are not pushed down.
        let f = cfg(|c| {
            c.namespaces = v(&["team-*"]);
            c.types = v(&["Warn*"]);
        });
        assert_eq!(f.scope().path, "/api/v1/events");
        assert_eq!(f.scope().field_selector, None);
        assert!(f.namespace_scopes().is_none());
    }
}
