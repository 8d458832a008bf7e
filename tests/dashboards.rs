//! Checks of the Grafana dashboards in `deploy/`: that they import (JSON, uid, title, data source
//! inputs), that every panel queries through the data source variable, that every LogQL query
//! selects kube-event's streams with labels that exist, that every PromQL query uses metrics
//! kube-event exports, with their labels, and that every variable a query uses is defined.
//!
//! There is no Grafana, Loki or Prometheus here, so the queries are checked by a small lexer that
//! knows enough of LogQL and PromQL for that. `checks_catch_broken_dashboards` breaks the
//! dashboards on purpose to show the checks fail when they should.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

// Only the line schema from `tests/support/`: the rest (fake servers) is not needed here.
#[path = "support/schema.rs"]
mod schema;
use schema::LINE_KEYS;

const EVENTS_DASHBOARD: &str = "deploy/grafana-dashboard.json";
const METRICS_DASHBOARD: &str = "deploy/grafana-dashboard-metrics.json";

/// Labels of kube-event's Loki streams: its own four, and `cluster`, which operators set with
/// `LABELS` (absent streams match `cluster=~".*"`).
const STREAM_LABELS: &[&str] = &["job", "namespace", "kind", "type", "cluster"];

/// Grafana's built-in variables a query may use.
const BUILTIN_VARIABLES: &[&str] = &[
    "__auto",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__rate_interval",
    "__from",
    "__to",
];

#[derive(Clone, Copy, PartialEq, Debug)]
enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

struct Metric {
    name: &'static str,
    kind: MetricKind,
    labels: &'static [&'static str],
}

const fn metric(name: &'static str, kind: MetricKind, labels: &'static [&'static str]) -> Metric {
    Metric { name, kind, labels }
}

/// The metrics kube-event serves at /metrics. This list must match src/metrics.rs: a metric
/// renamed there must be renamed here and in deploy/grafana-dashboard-metrics.json.
/// Prometheus adds `job` and `instance` to all of them.
const METRICS: &[Metric] = &[
    metric("kube_event_received_total", MetricKind::Counter, &["frame"]),
    metric("kube_event_shipped_total", MetricKind::Counter, &[]),
    metric("kube_event_unchanged_total", MetricKind::Counter, &[]),
    metric("kube_event_filtered_total", MetricKind::Counter, &[]),
    metric("kube_event_malformed_total", MetricKind::Counter, &[]),
    metric("kube_event_rejected_total", MetricKind::Counter, &[]),
    metric("kube_event_dropped_total", MetricKind::Counter, &["reason"]),
    metric("kube_event_restamped_total", MetricKind::Counter, &[]),
    metric("kube_event_truncated_total", MetricKind::Counter, &[]),
    metric(
        "kube_event_push_attempts_total",
        MetricKind::Counter,
        &["outcome", "status_class"],
    ),
    metric(
        "kube_event_push_duration_seconds",
        MetricKind::Histogram,
        &[],
    ),
    metric("kube_event_pushed_total", MetricKind::Counter, &[]),
    metric("kube_event_watch_restarts_total", MetricKind::Counter, &[]),
    metric("kube_event_relists_total", MetricKind::Counter, &[]),
    metric("kube_event_watch_expired_total", MetricKind::Counter, &[]),
    metric("kube_event_spool_bytes", MetricKind::Gauge, &[]),
    metric("kube_event_spool_batches", MetricKind::Gauge, &[]),
    metric(
        "kube_event_spool_write_errors_total",
        MetricKind::Counter,
        &[],
    ),
    metric("kube_event_seconds_since_last_push", MetricKind::Gauge, &[]),
    metric(
        "kube_event_seconds_since_last_watch_frame",
        MetricKind::Gauge,
        &[],
    ),
    metric("kube_event_up", MetricKind::Gauge, &[]),
    metric(
        "kube_event_build_info",
        MetricKind::Gauge,
        &["version", "commit"],
    ),
];

// ------------------------------------------------------------------------------------------
// Loading and walking a dashboard
// ------------------------------------------------------------------------------------------

fn read(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not valid JSON: {e}"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// All panels but rows, including those inside collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in array(dashboard, "panels") {
        if str_of(panel, "type") == "row" {
            out.extend(array(panel, "panels"));
        } else {
            out.push(panel);
        }
    }
    out
}

fn variables(dashboard: &Value) -> &[Value] {
    dashboard
        .get("templating")
        .map(|t| array(t, "list"))
        .unwrap_or(&[])
}

fn variable<'a>(dashboard: &'a Value, name: &str) -> Option<&'a Value> {
    variables(dashboard)
        .iter()
        .find(|v| str_of(v, "name") == name)
}

fn title(panel: &Value) -> String {
    format!("panel {:?}", str_of(panel, "title"))
}

/// Variables a text refers to: `$name`, `${name}`, `${name:format}`, `[[name]]`.
fn variable_refs(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && bytes.get(i + 1) == Some(&b'{') {
            let end = text[i..].find('}').map_or(text.len(), |e| i + e);
            let inner = &text[i + 2..end];
            out.push(inner.split(':').next().unwrap_or("").to_string());
            i = end;
        } else if bytes[i] == b'$' {
            let start = i + 1;
            let mut end = start;
            while end < bytes.len() && is_name(bytes[end]) {
                end += 1;
            }
            if end > start {
                out.push(text[start..end].to_string());
            }
            i = end;
        } else if text[i..].starts_with("[[") {
            let end = text[i..].find("]]").map_or(text.len(), |e| i + e);
            out.push(text[i + 2..end].split(':').next().unwrap_or("").to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// A lexer for LogQL and PromQL, enough to find selectors, ranges, groupings and stages
// ------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// A string literal's content, escapes left as written.
    Str(String),
    Num(String),
    /// A Grafana variable outside a string: `$__range`, `${x}`.
    Var(String),
    Op(&'static str),
}

const OPS: &[&str] = &[
    "|=", "|~", "!=", "!~", "=~", "==", ">=", "<=", "{", "}", "(", ")", "[", "]", ",", "|", "=",
    "<", ">", "+", "-", "*", "/", "%", "^",
];

fn lex(text: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' {
            let start = i + 1;
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            if i >= chars.len() {
                return Err(format!("unterminated string in {text:?}"));
            }
            out.push(Tok::Str(chars[start..i].iter().collect()));
            i += 1;
        } else if c == '`' {
            let start = i + 1;
            let end = chars[start..]
                .iter()
                .position(|&c| c == '`')
                .ok_or_else(|| format!("unterminated raw string in {text:?}"))?;
            out.push(Tok::Str(chars[start..start + end].iter().collect()));
            i = start + end + 1;
        } else if c == '$' {
            let rest: String = chars[i..].iter().collect();
            let name = variable_refs(&rest)
                .into_iter()
                .next()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| format!("a lone $ in {text:?}"))?;
            i += if chars.get(i + 1) == Some(&'{') {
                let close = chars[i..].iter().position(|&c| c == '}');
                close.ok_or_else(|| format!("unterminated ${{ in {text:?}"))? + 1
            } else {
                1 + name.len()
            };
            out.push(Tok::Var(name));
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Tok::Num(chars[start..i].iter().collect()));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else {
            let rest: String = chars[i..].iter().take(2).collect();
            let op = OPS
                .iter()
                .find(|op| rest.starts_with(**op))
                .ok_or_else(|| format!("unexpected {c:?} in {text:?}"))?;
            out.push(Tok::Op(op));
            i += op.chars().count();
        }
    }
    Ok(out)
}

#[derive(Debug)]
struct Matcher {
    label: String,
    op: &'static str,
    value: String,
}

/// Reads `{a="x", b=~"y"}` starting at the `{` at `tokens[*i]`; leaves `*i` after the `}`.
fn matchers(tokens: &[Tok], i: &mut usize) -> Result<Vec<Matcher>, String> {
    let mut out = Vec::new();
    *i += 1;
    loop {
        match tokens.get(*i) {
            Some(Tok::Op("}")) => {
                *i += 1;
                return Ok(out);
            }
            Some(Tok::Op(",")) => *i += 1,
            Some(Tok::Ident(label)) => {
                let op = match tokens.get(*i + 1) {
                    Some(Tok::Op(op @ ("=" | "!=" | "=~" | "!~"))) => *op,
                    other => return Err(format!("label {label} followed by {other:?}")),
                };
                let value = match tokens.get(*i + 2) {
                    Some(Tok::Str(s)) => s.clone(),
                    other => return Err(format!("label {label} matched against {other:?}")),
                };
                out.push(Matcher {
                    label: label.clone(),
                    op,
                    value,
                });
                *i += 3;
            }
            other => return Err(format!("unexpected {other:?} in a selector")),
        }
    }
}

/// Reads `by (a, b)` label lists: `tokens[*i]` is the `(`; leaves `*i` after the `)`.
fn label_list(tokens: &[Tok], i: &mut usize) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    *i += 1;
    loop {
        match tokens.get(*i) {
            Some(Tok::Op(")")) => {
                *i += 1;
                return Ok(out);
            }
            Some(Tok::Op(",")) => *i += 1,
            Some(Tok::Ident(label)) => {
                out.push(label.clone());
                *i += 1;
            }
            other => return Err(format!("unexpected {other:?} in a label list")),
        }
    }
}

/// Reads a range `[5m]` or `[$__auto]`: `tokens[*i]` is the `[`.
fn range(tokens: &[Tok], i: &mut usize) -> Result<String, String> {
    let inner = match tokens.get(*i + 1) {
        Some(Tok::Var(v)) => format!("${v}"),
        Some(Tok::Num(n)) => n.clone(),
        other => return Err(format!("unexpected {other:?} in a range")),
    };
    if tokens.get(*i + 2) != Some(&Tok::Op("]")) {
        return Err(format!("range [{inner} not closed"));
    }
    *i += 3;
    Ok(inner)
}

fn query_kind(instant: bool) -> &'static str {
    if instant {
        "an instant query"
    } else {
        "a range query"
    }
}

const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

// ------------------------------------------------------------------------------------------
// LogQL
// ------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct LogQl {
    selectors: Vec<Vec<Matcher>>,
    ranges: Vec<String>,
    grouping: Vec<String>,
    /// `| json` stages: the keys they extract, `None` for all of them.
    json: Vec<Option<Vec<String>>>,
    line_formats: Vec<String>,
}

fn analyze_logql(expr: &str) -> Result<LogQl, String> {
    let tokens = lex(expr)?;
    let mut q = LogQl::default();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Tok::Op("{") => q.selectors.push(matchers(&tokens, &mut i)?),
            Tok::Op("[") => q.ranges.push(range(&tokens, &mut i)?),
            Tok::Ident(word) if GROUPING.contains(&word.as_str()) => {
                i += 1;
                if tokens.get(i) != Some(&Tok::Op("(")) {
                    return Err(format!("{word} without a label list"));
                }
                q.grouping.extend(label_list(&tokens, &mut i)?);
            }
            Tok::Op("|") => match tokens.get(i + 1) {
                Some(Tok::Ident(stage)) if stage == "json" => {
                    i += 2;
                    let mut keys = Vec::new();
                    while let Some(Tok::Ident(key)) = tokens.get(i) {
                        keys.push(key.clone());
                        i += 1;
                        if tokens.get(i) == Some(&Tok::Op("=")) {
                            i += 2;
                        }
                        if tokens.get(i) == Some(&Tok::Op(",")) {
                            i += 1;
                        }
                    }
                    q.json.push(if keys.is_empty() { None } else { Some(keys) });
                }
                Some(Tok::Ident(stage)) if stage == "line_format" => {
                    match tokens.get(i + 2) {
                        Some(Tok::Str(template)) => q.line_formats.push(template.clone()),
                        other => return Err(format!("line_format followed by {other:?}")),
                    }
                    i += 3;
                }
                _ => i += 1,
            },
            _ => i += 1,
        }
    }
    Ok(q)
}

/// Problems of one LogQL expression. `instant`: evaluated once over the dashboard's range (stat,
/// table) rather than at each step (time series, logs).
fn logql_problems(expr: &str, instant: bool) -> Vec<String> {
    let q = match analyze_logql(expr) {
        Ok(q) => q,
        Err(e) => return vec![format!("{expr}: does not lex: {e}")],
    };
    let mut problems = Vec::new();
    let mut problem = |p: String| problems.push(format!("{expr}: {p}"));
    if q.selectors.is_empty() {
        problem("no stream selector".into());
    }
    for selector in &q.selectors {
        if !selector
            .iter()
            .any(|m| m.label == "job" && m.op == "=" && m.value == "kube-event")
        {
            problem("a stream selector without job=\"kube-event\"".into());
        }
        for m in selector {
            if !STREAM_LABELS.contains(&m.label.as_str()) {
                problem(format!(
                    "label {:?} is not a label of kube-event's streams",
                    m.label
                ));
            }
        }
    }
    for r in &q.ranges {
        let ok = if instant {
            r == "$__range" || r == "$__auto"
        } else {
            r == "$__auto" || r == "$__interval"
        };
        if !ok {
            problem(format!("range [{r}] in {}", query_kind(instant)));
        }
    }
    let mut extracted: BTreeSet<&str> = BTreeSet::new();
    for stage in &q.json {
        match stage {
            None => extracted.extend(LINE_KEYS),
            Some(keys) => {
                for key in keys {
                    if LINE_KEYS.contains(&key.as_str()) {
                        extracted.insert(key.as_str());
                    } else {
                        problem(format!("| json {key}: not a key of the line"));
                    }
                }
            }
        }
    }
    for label in &q.grouping {
        if !STREAM_LABELS.contains(&label.as_str()) && !extracted.contains(label.as_str()) {
            problem(format!(
                "groups by {label:?}, neither a stream label nor extracted by | json"
            ));
        }
    }
    for template in &q.line_formats {
        if q.json.is_empty() {
            problem("line_format without | json before it".into());
        }
        for field in template_fields(template) {
            if !STREAM_LABELS.contains(&field.as_str()) && !extracted.contains(field.as_str()) {
                problem(format!("line_format uses .{field}, which no label holds"));
            }
        }
    }
    problems
}

/// The `.field`s a Go template uses inside its `{{ }}` actions.
fn template_fields(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    for action in template.split("{{").skip(1) {
        let action = action.split("}}").next().unwrap_or("");
        let mut rest = action;
        while let Some(dot) = rest.find('.') {
            let name: String = rest[dot + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name.clone());
            }
            rest = &rest[dot + 1 + name.len()..];
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// PromQL
// ------------------------------------------------------------------------------------------

const PROMQL_KEYWORDS: &[&str] = &["bool", "and", "or", "unless", "offset"];

/// Aggregation operators, which may be followed by `by (…)` rather than `(`.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// Problems of one PromQL expression, and the metric families it uses.
fn promql_problems(expr: &str, instant: bool) -> (Vec<String>, BTreeSet<&'static str>) {
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    let tokens = match lex(expr) {
        Ok(t) => t,
        Err(e) => return (vec![format!("{expr}: does not lex: {e}")], used),
    };
    let mut problem = |p: String| problems.push(format!("{expr}: {p}"));
    let mut grouping = Vec::new();
    let mut labels_available: BTreeSet<&str> = ["job", "instance"].into();
    // The next metric is the argument of rate()/increase(), of histogram_quantile().
    let mut in_rate = false;
    let mut in_quantile = false;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Tok::Op("[") => match range(&tokens, &mut i) {
                Ok(r) => {
                    let ok = if instant {
                        r == "$__range"
                    } else {
                        r == "$__rate_interval" || r == "$__interval"
                    };
                    if !ok {
                        problem(format!("range [{r}] in {}", query_kind(instant)));
                    }
                }
                Err(e) => {
                    problem(e);
                    break;
                }
            },
            Tok::Ident(word) if GROUPING.contains(&word.as_str()) => {
                i += 1;
                if tokens.get(i) != Some(&Tok::Op("(")) {
                    problem(format!("{word} without a label list"));
                    break;
                }
                match label_list(&tokens, &mut i) {
                    Ok(labels) => grouping.extend(labels),
                    Err(e) => {
                        problem(e);
                        break;
                    }
                }
            }
            Tok::Ident(word) if tokens.get(i + 1) == Some(&Tok::Op("(")) => {
                match word.as_str() {
                    "rate" | "irate" | "increase" => in_rate = true,
                    "histogram_quantile" => in_quantile = true,
                    _ => {}
                }
                i += 1;
            }
            Tok::Ident(word)
                if PROMQL_KEYWORDS.contains(&word.as_str())
                    || AGGREGATIONS.contains(&word.as_str()) =>
            {
                i += 1
            }
            Tok::Ident(name) => {
                i += 1;
                let found = METRICS.iter().find_map(|m| {
                    if m.name == name {
                        return Some((m, ""));
                    }
                    if m.kind != MetricKind::Histogram {
                        return None;
                    }
                    ["_bucket", "_sum", "_count"]
                        .into_iter()
                        .find(|s| name.strip_suffix(s) == Some(m.name))
                        .map(|s| (m, s))
                });
                let Some((m, suffix)) = found else {
                    problem(format!("{name} is not a metric kube-event exports"));
                    continue;
                };
                used.insert(m.name);
                labels_available.extend(m.labels);
                if suffix == "_bucket" {
                    labels_available.insert("le");
                }
                let counting = m.kind == MetricKind::Counter || m.kind == MetricKind::Histogram;
                if counting && !in_rate {
                    problem(format!("counter {name} used without rate() or increase()"));
                }
                if !counting && in_rate {
                    problem(format!("gauge {name} inside rate() or increase()"));
                }
                if in_quantile && suffix != "_bucket" {
                    problem(format!("histogram_quantile() over {name}, not a _bucket"));
                }
                if m.kind == MetricKind::Histogram && suffix.is_empty() {
                    problem(format!(
                        "{name} is a histogram: use _bucket, _sum or _count"
                    ));
                }
                in_rate = false;
                in_quantile = false;
                let selector = if tokens.get(i) == Some(&Tok::Op("{")) {
                    match matchers(&tokens, &mut i) {
                        Ok(s) => s,
                        Err(e) => {
                            problem(e);
                            break;
                        }
                    }
                } else {
                    Vec::new()
                };
                if !selector
                    .iter()
                    .any(|m| m.label == "instance" && m.op == "=~" && m.value == "$instance")
                {
                    problem(format!("{name} without instance=~\"$instance\""));
                }
                for matcher in &selector {
                    let known = m.labels.contains(&matcher.label.as_str())
                        || ["job", "instance"].contains(&matcher.label.as_str())
                        || (suffix == "_bucket" && matcher.label == "le");
                    if !known {
                        problem(format!("{name} has no label {:?}", matcher.label));
                    }
                }
            }
            _ => i += 1,
        }
    }
    for label in &grouping {
        if !labels_available.contains(label.as_str()) {
            problem(format!("groups by {label:?}, which no metric here has"));
        }
    }
    if tokens
        .iter()
        .any(|t| t == &Tok::Ident("histogram_quantile".into()))
        && !grouping.iter().any(|l| l == "le")
    {
        problem("histogram_quantile() without sum by (le)".into());
    }
    if used.is_empty() {
        problem("uses no kube-event metric".into());
    }
    (problems, used)
}

// ------------------------------------------------------------------------------------------
// Dashboard checks
// ------------------------------------------------------------------------------------------

/// A target's query text and whether it is evaluated once (instant) or per step.
fn query_of(target: &Value, plugin: &str) -> (String, bool) {
    let expr = str_of(target, "expr").to_string();
    let instant = if plugin == "loki" {
        str_of(target, "queryType") == "instant"
    } else {
        target.get("instant").and_then(Value::as_bool) == Some(true)
            && target.get("range").and_then(Value::as_bool) != Some(true)
    };
    (expr, instant)
}

/// What both dashboards must get right. `plugin`: the data source type, `input`: the name of the
/// data source input (`DS_LOKI`).
fn common_problems(
    dashboard: &Value,
    plugin: &str,
    input: &str,
    expected_title: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    if str_of(dashboard, "title") != expected_title {
        problems.push(format!(
            "title is {:?}, not {expected_title:?}",
            str_of(dashboard, "title")
        ));
    }
    let uid = str_of(dashboard, "uid");
    if uid.is_empty() || uid.len() > 40 {
        problems.push(format!("uid {uid:?} must be set, at most 40 characters"));
    }
    if dashboard
        .get("schemaVersion")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        < 36
    {
        problems.push("schemaVersion below 36 (Grafana 9)".into());
    }

    // Importable: the data source is asked for at import, and substituted for ${DS_…}.
    let inputs = array(dashboard, "__inputs");
    if !inputs.iter().any(|i| {
        str_of(i, "name") == input
            && str_of(i, "type") == "datasource"
            && str_of(i, "pluginId") == plugin
    }) {
        problems.push(format!(
            "no __inputs entry for a {plugin} data source {input}"
        ));
    }
    let requires = array(dashboard, "__requires");
    let required = |kind: &str, id: &str| {
        requires
            .iter()
            .any(|r| str_of(r, "type") == kind && str_of(r, "id") == id)
    };
    if !required("grafana", "grafana") || !required("datasource", plugin) {
        problems.push(format!(
            "__requires must name grafana and the {plugin} data source"
        ));
    }
    let text = dashboard.to_string();
    for name in variable_refs(&text) {
        if name.starts_with("DS_") && !inputs.iter().any(|i| str_of(i, "name") == name) {
            problems.push(format!("${{{name}}} is not an __inputs entry"));
        }
    }

    // The data source variable, defaulting to the data source picked at import.
    match variable(dashboard, "datasource") {
        Some(v) if str_of(v, "type") == "datasource" && str_of(v, "query") == plugin => {
            let current = v.get("current").map(|c| str_of(c, "value")).unwrap_or("");
            if current != format!("${{{input}}}") {
                problems.push(format!(
                    "the datasource variable should default to ${{{input}}}"
                ));
            }
        }
        _ => problems.push(format!(
            "no variable \"datasource\" of type datasource with query {plugin}"
        )),
    }
    let via_variable = |ds: Option<&Value>| {
        ds.is_some_and(|ds| {
            str_of(ds, "type") == plugin
                && ["${datasource}", "$datasource"].contains(&str_of(ds, "uid"))
        })
    };

    let defined: BTreeSet<&str> = variables(dashboard)
        .iter()
        .map(|v| str_of(v, "name"))
        .collect();
    let check_refs = |what: &str, text: &str, problems: &mut Vec<String>| {
        for name in variable_refs(text) {
            if !defined.contains(name.as_str())
                && !BUILTIN_VARIABLES.contains(&name.as_str())
                && !name.starts_with("DS_")
            {
                problems.push(format!("{what}: variable ${name} is not defined"));
            }
        }
    };

    for v in variables(dashboard) {
        if str_of(v, "type") == "query" {
            if !via_variable(v.get("datasource")) {
                problems.push(format!(
                    "variable {} does not query through ${{datasource}}",
                    str_of(v, "name")
                ));
            }
            check_refs(
                &format!("variable {}", str_of(v, "name")),
                &v.get("query").map(Value::to_string).unwrap_or_default(),
                &mut problems,
            );
        }
    }

    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(i64, i64), String> = BTreeMap::new();
    let mut overlaps = BTreeSet::new();
    for panel in panels(dashboard) {
        let name = title(panel);
        if str_of(panel, "title").is_empty() {
            problems.push("a panel without a title".into());
        }
        if !ids.insert(panel.get("id").and_then(Value::as_i64).unwrap_or(-1)) {
            problems.push(format!("{name}: id missing or not unique"));
        }
        if !required("panel", str_of(panel, "type")) {
            problems.push(format!(
                "{name}: panel type {} missing from __requires",
                str_of(panel, "type")
            ));
        }
        let pos = panel.get("gridPos").cloned().unwrap_or_default();
        let at = |k: &str| pos.get(k).and_then(Value::as_i64).unwrap_or(-1);
        let (x, y, w, h) = (at("x"), at("y"), at("w"), at("h"));
        if x < 0 || y < 0 || w < 1 || h < 1 || x + w > 24 {
            problems.push(format!("{name}: gridPos {pos} outside the 24-column grid"));
        } else {
            for cx in x..x + w {
                for cy in y..y + h {
                    if let Some(other) = cells.insert((cx, cy), name.clone()) {
                        overlaps.insert(format!("{name} overlaps {other}"));
                    }
                }
            }
        }
        if !via_variable(panel.get("datasource")) {
            problems.push(format!(
                "{name}: datasource is not the ${{datasource}} variable"
            ));
        }
        let targets = array(panel, "targets");
        if targets.is_empty() {
            problems.push(format!("{name}: no queries"));
        }
        let mut refs = BTreeSet::new();
        for target in targets {
            if target.get("datasource").is_some() && !via_variable(target.get("datasource")) {
                problems.push(format!(
                    "{name}: a query's datasource is not ${{datasource}}"
                ));
            }
            if !refs.insert(str_of(target, "refId")) || str_of(target, "refId").is_empty() {
                problems.push(format!("{name}: refId missing or repeated"));
            }
            if str_of(target, "expr").trim().is_empty() {
                problems.push(format!("{name}: empty query"));
            }
            check_refs(&name, str_of(target, "expr"), &mut problems);
            check_refs(&name, str_of(target, "legendFormat"), &mut problems);
        }
    }
    problems.extend(overlaps);
    problems
}

fn events_problems(dashboard: &Value) -> Vec<String> {
    let mut problems = common_problems(
        dashboard,
        "loki",
        "DS_LOKI",
        "Kubernetes events (kube-event)",
    );

    // Label variables: Loki label values of kube-event's streams, multi-valued, All = `.*` so
    // streams without the label (no cluster set, cluster-scoped objects) still match.
    for name in ["cluster", "namespace", "kind", "type"] {
        let Some(v) = variable(dashboard, name) else {
            problems.push(format!("no variable {name}"));
            continue;
        };
        let query = v.get("query").cloned().unwrap_or_default();
        let stream = str_of(&query, "stream");
        if str_of(v, "type") != "query"
            || query.get("type").and_then(Value::as_u64) != Some(1)
            || str_of(&query, "label") != name
        {
            problems.push(format!("variable {name}: not Loki label values of {name}"));
        }
        problems.extend(
            logql_problems(stream, false)
                .into_iter()
                .map(|p| format!("variable {name}: {p}")),
        );
        if v.get("includeAll") != Some(&Value::Bool(true))
            || v.get("multi") != Some(&Value::Bool(true))
            || str_of(v, "allValue") != ".*"
        {
            problems.push(format!(
                "variable {name}: must be multi, include All, All = .*"
            ));
        }
    }
    match variable(dashboard, "search") {
        Some(v) if str_of(v, "type") == "textbox" => {}
        _ => problems.push("no textbox variable search".into()),
    }

    // Every query: kube-event's streams, labels that exist, ranges that fit the query type,
    // variables matched as regexes (they are multi-valued).
    let mut logs_panels = 0;
    for panel in panels(dashboard) {
        let name = title(panel);
        let logs = str_of(panel, "type") == "logs";
        logs_panels += usize::from(logs);
        for target in array(panel, "targets") {
            let (expr, instant) = query_of(target, "loki");
            problems.extend(
                logql_problems(&expr, instant)
                    .into_iter()
                    .map(|p| format!("{name}: {p}")),
            );
            let Ok(q) = analyze_logql(&expr) else {
                continue;
            };
            if logs != q.ranges.is_empty() {
                problems.push(format!(
                    "{name}: {} panel with a {} query",
                    str_of(panel, "type"),
                    if q.ranges.is_empty() { "log" } else { "metric" }
                ));
            }
            for m in q.selectors.iter().flatten() {
                if !variable_refs(&m.value).is_empty() && m.op != "=~" {
                    problems.push(format!(
                        "{name}: {}{}\"{}\": a variable needs =~",
                        m.label, m.op, m.value
                    ));
                }
            }
            if logs {
                let readable = q.line_formats.iter().any(|t| {
                    let fields = template_fields(t);
                    [
                        "type",
                        "namespace",
                        "kind",
                        "name",
                        "reason",
                        "count",
                        "message",
                    ]
                    .iter()
                    .all(|f| fields.iter().any(|x| x == f))
                });
                if !readable {
                    problems.push(format!(
                        "{name}: no line_format showing type, namespace/kind/name, reason, count and message"
                    ));
                }
            }
        }
    }
    if logs_panels != 1 {
        problems.push(format!("{logs_panels} logs panels, expected one"));
    }

    // The panels the issue asks for, found by what they query.
    let has = |kind: &str, what: &str, test: &dyn Fn(&str) -> bool| {
        let found = panels(dashboard).into_iter().any(|p| {
            (kind.is_empty() || str_of(p, "type") == kind)
                && array(p, "targets").iter().any(|t| test(str_of(t, "expr")))
        });
        (!found).then(|| format!("no {what} panel"))
    };
    problems.extend(has("timeseries", "events over time by type", &|e| {
        e.contains("sum by (type) (count_over_time(") && e.contains("[$__auto]")
    }));
    problems.extend(has("", "warnings by reason", &|e| {
        e.contains("by (reason)") && e.contains("type=\"Warning\"")
    }));
    problems.extend(has("", "top namespaces", &|e| {
        e.starts_with("topk(") && e.contains("by (namespace)") && e.contains("[$__range]")
    }));
    problems.extend(has("", "top objects", &|e| {
        e.starts_with("topk(") && e.contains("kind, name)") && e.contains("| json")
    }));
    problems
}

fn metrics_problems(dashboard: &Value) -> (Vec<String>, BTreeSet<&'static str>) {
    let mut problems = common_problems(
        dashboard,
        "prometheus",
        "DS_PROMETHEUS",
        "kube-event (self-monitoring)",
    );
    let mut used = BTreeSet::new();
    match variable(dashboard, "instance") {
        Some(v) if str_of(v, "type") == "query" => {
            let query = v.get("query").cloned().unwrap_or_default();
            let text = query.as_str().unwrap_or_else(|| str_of(&query, "query"));
            if text != "label_values(kube_event_up, instance)" {
                problems.push(format!("variable instance: query {text:?}"));
            }
            if str_of(v, "allValue") != ".*" {
                problems.push("variable instance: All must be .*".into());
            }
        }
        _ => problems.push("no query variable instance".into()),
    }
    for panel in panels(dashboard) {
        for target in array(panel, "targets") {
            let (expr, instant) = query_of(target, "prometheus");
            let (p, u) = promql_problems(&expr, instant);
            problems.extend(p.into_iter().map(|p| format!("{}: {p}", title(panel))));
            used.extend(u);
        }
    }
    (problems, used)
}

fn report(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problems:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

// ------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------

#[test]
fn events_dashboard_is_valid() {
    report(&events_problems(&parse(&read(EVENTS_DASHBOARD))));
}

#[test]
fn metrics_dashboard_is_valid() {
    report(&metrics_problems(&parse(&read(METRICS_DASHBOARD))).0);
}

#[test]
fn every_exported_metric_has_a_panel() {
    let (_, used) = metrics_problems(&parse(&read(METRICS_DASHBOARD)));
    let missing: Vec<_> = METRICS
        .iter()
        .map(|m| m.name)
        .filter(|m| !used.contains(m))
        .collect();
    assert!(missing.is_empty(), "metrics without a panel: {missing:?}");
}

#[test]
fn dashboards_have_distinct_uids() {
    let a = parse(&read(EVENTS_DASHBOARD));
    let b = parse(&read(METRICS_DASHBOARD));
    assert_ne!(str_of(&a, "uid"), str_of(&b, "uid"));
}

#[test]
fn lexer_and_helpers() {
    assert_eq!(
        variable_refs(r#"{a=~"$cluster"} |~ `${search}` [$__auto] ${x:regex} [[old]]"#),
        ["cluster", "search", "__auto", "x", "old"]
    );
    assert_eq!(
        lex(r#"sum by (type) (count_over_time({job="a\"b"} |~ `x` [$__auto]))"#).unwrap(),
        vec![
            Tok::Ident("sum".into()),
            Tok::Ident("by".into()),
            Tok::Op("("),
            Tok::Ident("type".into()),
            Tok::Op(")"),
            Tok::Op("("),
            Tok::Ident("count_over_time".into()),
            Tok::Op("("),
            Tok::Op("{"),
            Tok::Ident("job".into()),
            Tok::Op("="),
            Tok::Str(r#"a\"b"#.into()),
            Tok::Op("}"),
            Tok::Op("|~"),
            Tok::Str("x".into()),
            Tok::Op("["),
            Tok::Var("__auto".into()),
            Tok::Op("]"),
            Tok::Op(")"),
            Tok::Op(")"),
        ]
    );
    assert!(lex(r#"{job="kube-event}"#).is_err());
    assert_eq!(
        template_fields("{{.type}} {{if .namespace}}{{.namespace}}/{{end}}x{{ .count }}"),
        ["type", "namespace", "namespace", "count"]
    );
}

/// Breaks the dashboards in the ways the checks are there for, and expects each to be caught.
#[test]
fn checks_catch_broken_dashboards() {
    let events = read(EVENTS_DASHBOARD);
    let metrics = read(METRICS_DASHBOARD);

    let broken_events: &[(&str, &str, &str)] = &[
        (r#"{job=\"kube-event\", "#, "{", "job=\"kube-event\""),
        (
            r#"kind=~\"$kind\""#,
            r#"pod=~\"$kind\""#,
            "\"pod\" is not a label",
        ),
        (
            r#"namespace=~\"$namespace\""#,
            r#"namespace=~\"$nmspace\""#,
            "$nmspace is not defined",
        ),
        (
            r#"namespace=~\"$namespace\""#,
            r#"namespace=\"$namespace\""#,
            "needs =~",
        ),
        ("[$__auto]", "[$__range]", "in a range query"),
        ("[$__range]", "[5m]", "in an instant query"),
        ("| json name", "| json nam", "not a key of the line"),
        ("by (reason)", "by (reasons)", "groups by \"reasons\""),
        ("{{.message}}", "{{.msg}}", ".msg"),
        ("line_format", "line_formatx", "no line_format"),
        (
            r#""uid": "${datasource}""#,
            r#""uid": "P1809F7CD0C75ACF3""#,
            "not the ${datasource}",
        ),
        ("\"DS_LOKI\"", "\"DS_OTHER\"", "__inputs"),
        ("\"type\": \"logs\"", "\"type\": \"table\"", "logs panels"),
        ("\"allValue\": \".*\"", "\"allValue\": \"\"", "All = .*"),
    ];
    for (from, to, expected) in broken_events {
        assert!(
            events.contains(from),
            "{from:?} is not in {EVENTS_DASHBOARD}"
        );
        let problems = events_problems(&parse(&events.replacen(from, to, 1)));
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "replacing {from:?} by {to:?}: expected a problem with {expected:?}, got {problems:#?}"
        );
    }
    let textbox = events.replacen("\"type\": \"textbox\"", "\"type\": \"constant\"", 1);
    assert!(events_problems(&parse(&textbox))
        .iter()
        .any(|p| p.contains("textbox variable search")));

    let broken_metrics: &[(&str, &str, &str)] = &[
        (
            "kube_event_shipped_total",
            "kube_event_shiped_total",
            "not a metric",
        ),
        ("by (frame)", "by (frames)", "groups by \"frames\""),
        (
            "rate(kube_event_pushed_total",
            "rate(kube_event_spool_bytes",
            "gauge kube_event_spool_bytes inside rate",
        ),
        (
            "sum(increase(kube_event_rejected_total",
            "sum((kube_event_rejected_total",
            "without rate() or increase()",
        ),
        (
            "sum by (le) (rate(kube_event_push_duration_seconds_bucket",
            "sum(rate(kube_event_push_duration_seconds_bucket",
            "without sum by (le)",
        ),
        (
            r#"kube_event_up{instance=~\"$instance\"}"#,
            "kube_event_up",
            "without instance",
        ),
        (
            r#"{instance=~\"$instance\"}[$__rate_interval]"#,
            r#"{instance=~\"$instance\", pod=\"x\"}[$__rate_interval]"#,
            "has no label \"pod\"",
        ),
        ("[$__rate_interval]", "[$__range]", "in a range query"),
        (
            "\"title\": \"kube-event (self-monitoring)\"",
            "\"title\": \"\"",
            "title is",
        ),
        ("\"uid\": \"kube-event-metrics\"", "\"uid\": \"\"", "uid"),
    ];
    for (from, to, expected) in broken_metrics {
        assert!(
            metrics.contains(from),
            "{from:?} is not in {METRICS_DASHBOARD}"
        );
        let (problems, _) = metrics_problems(&parse(&metrics.replacen(from, to, 1)));
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "replacing {from:?} by {to:?}: expected a problem with {expected:?}, got {problems:#?}"
        );
    }

    // A metric dropped from the dashboard is noticed.
    let without = metrics.replace(
        "kube_event_relists_total",
        "kube_event_watch_restarts_total",
    );
    let (_, used) = metrics_problems(&parse(&without));
    assert!(!used.contains("kube_event_relists_total"));
}

/// The LogQL shown in deploy/dashboards.md (pasted into README) passes the same checks.
#[test]
fn documented_logql_is_valid() {
    let text = read("deploy/dashboards.md");
    let mut queries = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        match line.trim() {
            "```logql" => in_block = true,
            "```" => in_block = false,
            l if in_block && !l.is_empty() && !l.starts_with('#') => queries.push(l.to_string()),
            _ => {}
        }
    }
    assert!(queries.len() >= 5, "LogQL examples: {queries:?}");
    let mut problems = Vec::new();
    for q in &queries {
        problems.extend(logql_problems(q, q.contains("[$__range]")));
    }
    report(&problems);
}
