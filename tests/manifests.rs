//! The deployment files, checked without a cluster or systemd: every YAML document of
//! `deploy/*.yaml` parses and says what the README promises (rights limited to reading
//! events, one replica that never overlaps another on DATA_DIR, a locked-down pod whose probes
//! and Service reach the metrics address its ConfigMap sets); the ConfigMap's
//! `kube-event.conf` uses only keys this binary knows and loads; the systemd unit is a
//! sandboxed `Type=notify` service; the Dockerfile builds the image the Deployment names.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kube_event::config::KEYS;
use yaml_rust2::{Yaml, YamlLoader};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const NS: &str = "kube-event";
const CONF_PATH: &str = "/etc/kube-event/kube-event.conf";

fn read(rel: &str) -> String {
    let path = Path::new(ROOT).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn load(rel: &str) -> Vec<Yaml> {
    let docs = YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let docs: Vec<Yaml> = docs.into_iter().filter(|d| !d.is_null()).collect();
    for d in &docs {
        for key in ["apiVersion", "kind"] {
            assert!(
                d[key].as_str().is_some(),
                "{rel}: a document without {key}: {d:?}"
            );
        }
        assert!(
            d["metadata"]["name"].as_str().is_some(),
            "{rel}: a document without metadata.name: {d:?}"
        );
    }
    docs
}

fn kind(doc: &Yaml) -> &str {
    doc["kind"].as_str().unwrap()
}

fn name(doc: &Yaml) -> &str {
    doc["metadata"]["name"].as_str().unwrap()
}

/// The one document of `kind` in `docs`.
fn one<'a>(docs: &'a [Yaml], kind_: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = docs.iter().filter(|d| kind(d) == kind_).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind_}");
    found[0]
}

fn str_at<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {y:?}"))
}

fn strings(y: &Yaml, what: &str) -> Vec<String> {
    y.as_vec()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {y:?}"))
        .iter()
        .map(|s| str_at(s, what).to_string())
        .collect()
}

fn int(y: &Yaml, what: &str) -> i64 {
    y.as_i64()
        .unwrap_or_else(|| panic!("{what}: expected a number, got {y:?}"))
}

fn yaml_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("deploy"))
        .expect("read deploy/")
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    files
}

/// KEY=VALUE lines of a kube-event.conf text (comments and blank lines skipped).
fn conf_pairs(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE: {l:?}"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

fn conf_value<'a>(pairs: &'a [(String, String)], key: &str) -> &'a str {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("the ConfigMap's kube-event.conf does not set {key}"))
}

fn configmap_conf(docs: &[Yaml]) -> String {
    let cm = one(docs, "ConfigMap");
    assert_eq!(name(cm), "kube-event");
    str_at(
        &cm["data"]["kube-event.conf"],
        "ConfigMap data kube-event.conf",
    )
    .to_string()
}

fn check_rbac(docs: &[Yaml], file: &str) {
    let sa = one(docs, "ServiceAccount");
    assert_eq!(
        (name(sa), sa["metadata"]["namespace"].as_str()),
        ("kube-event", Some(NS))
    );

    let role = one(docs, "ClusterRole");
    assert_eq!(name(role), "kube-event");
    let rules = role["rules"].as_vec().expect("ClusterRole rules");
    assert_eq!(
        rules.len(),
        1,
        "{file}: the ClusterRole must have exactly one rule"
    );
    let rule = &rules[0];
    assert_eq!(strings(&rule["apiGroups"], "apiGroups"), [""], "{file}");
    assert_eq!(
        strings(&rule["resources"], "resources"),
        ["events"],
        "{file}"
    );
    let verbs: BTreeSet<String> = strings(&rule["verbs"], "verbs").into_iter().collect();
    let want: BTreeSet<String> = ["get", "list", "watch"].map(String::from).into();
    assert_eq!(verbs, want, "{file}: verbs");
    assert_eq!(
        rule["verbs"].as_vec().unwrap().len(),
        3,
        "{file}: repeated verbs"
    );
    let keys: Vec<&str> = rule
        .as_hash()
        .unwrap()
        .keys()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(
        keys.iter()
            .all(|k| ["apiGroups", "resources", "verbs"].contains(k)),
        "{file}: the rule must not restrict or widen itself otherwise: {keys:?}"
    );

    let binding = one(docs, "ClusterRoleBinding");
    assert_eq!(name(binding), "kube-event");
    let r = &binding["roleRef"];
    assert_eq!(
        (
            r["apiGroup"].as_str(),
            r["kind"].as_str(),
            r["name"].as_str()
        ),
        (
            Some("rbac.authorization.k8s.io"),
            Some("ClusterRole"),
            Some("kube-event")
        )
    );
    let subjects = binding["subjects"].as_vec().expect("subjects");
    assert_eq!(subjects.len(), 1, "{file}");
    let s = &subjects[0];
    assert_eq!(
        (
            s["kind"].as_str(),
            s["name"].as_str(),
            s["namespace"].as_str()
        ),
        (Some("ServiceAccount"), Some("kube-event"), Some(NS))
    );
}

#[test]
fn every_deploy_yaml_document_parses() {
    let files = yaml_files();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["kube-event.yaml", "rbac.yaml"] {
        assert!(
            names.iter().any(|n| n == want),
            "deploy/{want} missing: {names:?}"
        );
    }
    for f in &names {
        assert!(
            !load(&format!("deploy/{f}")).is_empty(),
            "deploy/{f} is empty"
        );
    }
}

#[test]
fn rbac_yaml_grants_only_get_list_watch_on_events() {
    let docs = load("deploy/rbac.yaml");
    let kinds: BTreeSet<&str> = docs.iter().map(kind).collect();
    let want: BTreeSet<&str> = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    ]
    .into();
    assert_eq!(kinds, want);
    check_rbac(&docs, "deploy/rbac.yaml");
}

#[test]
fn kube_event_yaml_has_every_object_in_its_namespace_with_the_same_rbac() {
    let docs = load("deploy/kube-event.yaml");
    let kinds: Vec<&str> = docs.iter().map(kind).collect();
    for want in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
    ] {
        assert_eq!(
            kinds.iter().filter(|k| **k == want).count(),
            1,
            "one {want} expected: {kinds:?}"
        );
    }
    assert_eq!(name(one(&docs, "Namespace")), NS);
    for d in &docs {
        let namespaced = !["Namespace", "ClusterRole", "ClusterRoleBinding"].contains(&kind(d));
        if namespaced {
            assert_eq!(
                d["metadata"]["namespace"].as_str(),
                Some(NS),
                "{} {} must be in namespace {NS}",
                kind(d),
                name(d)
            );
        }
    }
    check_rbac(&docs, "deploy/kube-event.yaml");
    // The two files must not drift apart.
    let rbac = load("deploy/rbac.yaml");
    for k in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"] {
        assert_eq!(
            one(&docs, k),
            one(&rbac, k),
            "{k} differs between the two files"
        );
    }
}

#[test]
fn configmap_conf_uses_only_known_keys_and_loads() {
    let docs = load("deploy/kube-event.yaml");
    let text = configmap_conf(&docs);
    let pairs = conf_pairs(&text);
    // Keys shown commented out (`# KEY=`) are invitations to set them: known keys too.
    let commented = text.lines().filter_map(|l| {
        let rest = l.trim().strip_prefix('#')?.trim_start();
        let (k, _) = rest.split_once('=')?;
        (!k.is_empty() && k.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')).then_some(k)
    });
    for key in pairs.iter().map(|(k, _)| k.as_str()).chain(commented) {
        assert!(
            KEYS.contains(&key),
            "the ConfigMap's kube-event.conf sets {key}, which kube-event does not know \
             (kube_event::config::KEYS: {KEYS:?})"
        );
    }
    assert!(
        conf_value(&pairs, "LOKI_URL").starts_with("http"),
        "LOKI_URL must be set"
    );
    assert!(
        !pairs.iter().any(|(k, _)| k == "KUBECONFIG"),
        "in a pod kube-event must use its ServiceAccount: no KUBECONFIG"
    );

    // And kube-event itself accepts the file, with nothing from the environment.
    let dir = std::env::temp_dir().join(format!("kube-event-manifests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kube-event.conf");
    std::fs::write(&path, &text).unwrap();
    let no_env = |_: &str| None;
    let loaded = kube_event::config::load(Some(&path), &no_env);
    let _ = std::fs::remove_dir_all(&dir);
    let config = loaded.unwrap_or_else(|e| panic!("the ConfigMap's kube-event.conf: {e}"));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert_eq!(config.data_dir, Path::new(conf_value(&pairs, "DATA_DIR")));
}

#[test]
fn deployment_is_one_locked_down_replica_with_probes_on_the_metrics_port() {
    let docs = load("deploy/kube-event.yaml");
    let pairs = conf_pairs(&configmap_conf(&docs));
    let d = one(&docs, "Deployment");
    assert_eq!(name(d), "kube-event");
    let spec = &d["spec"];
    assert_eq!(int(&spec["replicas"], "replicas"), 1);
    assert_eq!(spec["strategy"]["type"].as_str(), Some("Recreate"));
    let pod = &spec["template"]["spec"];
    let labels = spec["template"]["metadata"]["labels"]
        .as_hash()
        .expect("pod labels");
    let selector = spec["selector"]["matchLabels"]
        .as_hash()
        .expect("selector.matchLabels");
    for (k, v) in selector {
        assert_eq!(
            labels.get(k),
            Some(v),
            "the selector must match the pod's labels"
        );
    }
    assert_eq!(pod["serviceAccountName"].as_str(), Some("kube-event"));
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(true));
    let grace = int(
        &pod["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    );
    assert!(
        grace as u64 > kube_event::SHUTDOWN_GRACE.as_secs(),
        "terminationGracePeriodSeconds {grace} leaves no room for the final push"
    );
    assert_eq!(grace, 30);

    let containers = pod["containers"].as_vec().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(
        c["image"].as_str(),
        Some(&format!("kube-event:{}", env!("CARGO_PKG_VERSION"))[..]),
        "the image tag follows Cargo.toml's version"
    );
    assert_eq!(strings(&c["args"], "args"), ["--config", CONF_PATH]);

    // Security: the container's settings win over the pod's.
    let sec = |key: &str| {
        let v = &c["securityContext"][key];
        if v.is_badvalue() {
            pod["securityContext"][key].clone()
        } else {
            v.clone()
        }
    };
    assert_eq!(sec("runAsNonRoot").as_bool(), Some(true));
    assert_eq!(sec("runAsUser").as_i64(), Some(65532));
    assert_eq!(sec("runAsGroup").as_i64(), Some(65532));
    assert_eq!(pod["securityContext"]["fsGroup"].as_i64(), Some(65532));
    assert_eq!(sec("readOnlyRootFilesystem").as_bool(), Some(true));
    assert_eq!(sec("allowPrivilegeEscalation").as_bool(), Some(false));
    assert_ne!(sec("privileged").as_bool(), Some(true));
    assert_eq!(
        sec("seccompProfile")["type"].as_str(),
        Some("RuntimeDefault")
    );
    let caps = &c["securityContext"]["capabilities"];
    assert_eq!(strings(&caps["drop"], "capabilities.drop"), ["ALL"]);
    assert!(caps["add"].is_badvalue(), "no capability may be added");

    // Resources: requests and a memory limit, with the note on where the numbers come from.
    let res = &c["resources"];
    for (what, v) in [
        ("requests.cpu", &res["requests"]["cpu"]),
        ("requests.memory", &res["requests"]["memory"]),
        ("limits.memory", &res["limits"]["memory"]),
    ] {
        assert!(
            v.as_str().is_some_and(|s| !s.is_empty()),
            "resources.{what} missing"
        );
    }
    assert!(read("deploy/kube-event.yaml").contains("# sized from measurements: see README"));

    // Probes, container port, Service and METRICS_ADDR all name the same port.
    let metrics_addr = conf_value(&pairs, "METRICS_ADDR");
    let (host, port) = metrics_addr
        .rsplit_once(':')
        .expect("METRICS_ADDR host:port");
    assert!(
        host == "0.0.0.0" || host == "[::]",
        "METRICS_ADDR {metrics_addr}: the kubelet probes the pod's IP, so listen on all addresses"
    );
    let port: i64 = port.parse().expect("METRICS_ADDR port");
    let ports = c["ports"].as_vec().expect("container ports");
    let resolve = |p: &Yaml| -> i64 {
        match p {
            Yaml::Integer(n) => *n,
            Yaml::String(s) => ports
                .iter()
                .find(|cp| cp["name"].as_str() == Some(s))
                .map(|cp| int(&cp["containerPort"], "containerPort"))
                .unwrap_or_else(|| panic!("no container port named {s}")),
            other => panic!("port: {other:?}"),
        }
    };
    assert!(
        ports
            .iter()
            .any(|p| p["containerPort"].as_i64() == Some(port)),
        "no containerPort {port}"
    );
    let live = &c["livenessProbe"];
    assert_eq!(live["httpGet"]["path"].as_str(), Some("/healthz"));
    assert_eq!(resolve(&live["httpGet"]["port"]), port);
    assert_eq!(int(&live["periodSeconds"], "liveness periodSeconds"), 30);
    assert_eq!(
        int(&live["failureThreshold"], "liveness failureThreshold"),
        3
    );
    let ready = &c["readinessProbe"];
    assert_eq!(ready["httpGet"]["path"].as_str(), Some("/readyz"));
    assert_eq!(resolve(&ready["httpGet"]["port"]), port);

    let svc = one(&docs, "Service");
    assert_eq!(name(svc), "kube-event-metrics");
    for (k, v) in svc["spec"]["selector"].as_hash().expect("Service selector") {
        assert_eq!(labels.get(k), Some(v), "the Service must select the pod");
    }
    let sp = svc["spec"]["ports"].as_vec().expect("Service ports");
    assert_eq!(sp.len(), 1);
    assert_eq!(sp[0]["name"].as_str(), Some("http-metrics"));
    assert_eq!(int(&sp[0]["port"], "Service port"), port);
    assert_eq!(resolve(&sp[0]["targetPort"]), port);
    let ann = &svc["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        ann["prometheus.io/port"].as_str(),
        Some(&port.to_string()[..])
    );
    assert_eq!(ann["prometheus.io/path"].as_str(), Some("/metrics"));

    // Volumes: the config from the ConfigMap where --config points, read-only; DATA_DIR on
    // the PersistentVolumeClaim, writable.
    let volumes = pod["volumes"].as_vec().expect("volumes");
    let mounts = c["volumeMounts"].as_vec().expect("volumeMounts");
    let volume = |mount_path: &str| -> (&Yaml, &Yaml) {
        let m = mounts
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(mount_path))
            .unwrap_or_else(|| panic!("nothing mounted at {mount_path}"));
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume {:?}", m["name"]));
        (m, v)
    };
    let (m, v) = volume(Path::new(CONF_PATH).parent().unwrap().to_str().unwrap());
    assert_eq!(m["readOnly"].as_bool(), Some(true));
    assert_eq!(v["configMap"]["name"].as_str(), Some("kube-event"));
    let data_dir = conf_value(&pairs, "DATA_DIR");
    assert!(
        data_dir.starts_with('/'),
        "DATA_DIR {data_dir} must be absolute in the pod"
    );
    let (m, v) = volume(data_dir);
    assert_ne!(
        m["readOnly"].as_bool(),
        Some(true),
        "DATA_DIR must be writable"
    );
    let claim = v["persistentVolumeClaim"]["claimName"]
        .as_str()
        .expect("DATA_DIR on a PersistentVolumeClaim");
    let pvc = one(&docs, "PersistentVolumeClaim");
    assert_eq!(name(pvc), claim);
    assert_eq!(
        strings(&pvc["spec"]["accessModes"], "accessModes"),
        ["ReadWriteOnce"]
    );
    assert_eq!(
        pvc["spec"]["resources"]["requests"]["storage"].as_str(),
        Some("1Gi")
    );
}

/// `[Section]` and `Key=Value` lines of a systemd unit, in order (keys may repeat).
fn unit_lines(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("kube-event.service:{}: not Key=Value: {line}", n + 1));
        assert!(
            !section.is_empty(),
            "kube-event.service:{}: outside a section",
            n + 1
        );
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

#[test]
fn systemd_unit_is_a_sandboxed_notify_service() {
    let lines = unit_lines(&read("systemd/kube-event.service"));
    let all = |key: &str| -> Vec<&str> {
        lines
            .iter()
            .filter(|(s, k, _)| s == "Service" && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    };
    let get = |key: &str| -> &str {
        let v = all(key);
        assert_eq!(v.len(), 1, "[Service] {key} must be set once: {v:?}");
        v[0]
    };
    let sections: BTreeSet<&str> = lines.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(sections, ["Install", "Service", "Unit"].into());
    assert!(lines
        .iter()
        .any(|(s, k, v)| s == "Install" && k == "WantedBy" && v == "multi-user.target"));

    assert_eq!(get("Type"), "notify");
    assert_eq!(get("NotifyAccess"), "main");
    assert_eq!(
        get("ExecStart"),
        format!("/usr/local/bin/kube-event --config {CONF_PATH}")
    );
    assert_eq!(get("Restart"), "always");
    assert_eq!(get("RestartSec"), "5");
    let stop: u64 = get("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!(stop > kube_event::SHUTDOWN_GRACE.as_secs() && stop == 30);

    // DATA_DIR in the StateDirectory; logs to the journal. Only keys kube-event knows.
    assert_eq!(get("StateDirectory"), "kube-event");
    let env: Vec<(&str, &str)> = all("Environment")
        .iter()
        .map(|e| {
            e.trim_matches('"')
                .split_once('=')
                .expect("Environment=KEY=VALUE")
        })
        .collect();
    assert!(
        env.contains(&("DATA_DIR", "/var/lib/kube-event")),
        "{env:?}"
    );
    assert!(env.contains(&("LOG_FILE", "")), "{env:?}");
    for (k, _) in &env {
        assert!(
            KEYS.contains(k),
            "Environment={k}=...: not a key kube-event knows"
        );
    }
    // Runs as root by default (to read admin.conf): the switch to a user is a comment.
    assert!(all("User").is_empty() && all("DynamicUser").is_empty());

    for key in [
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ] {
        assert_eq!(get(key), "yes", "{key}");
    }
    assert_eq!(get("ProtectSystem"), "strict");
    assert_eq!(get("SystemCallArchitectures"), "native");
    assert_eq!(get("CapabilityBoundingSet"), "");
    let families: BTreeSet<&str> = get("RestrictAddressFamilies").split_whitespace().collect();
    assert_eq!(families, ["AF_INET", "AF_INET6", "AF_UNIX"].into());
    // Writable: the StateDirectory only.
    assert!(
        all("ReadWritePaths").is_empty(),
        "{:?}",
        all("ReadWritePaths")
    );
}

#[test]
fn dockerfile_builds_the_image_the_deployment_runs() {
    let text = read("Dockerfile");
    let instr: Vec<(String, String)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (i, rest) = l.split_once(' ').unwrap_or((l, ""));
            (i.to_uppercase(), rest.trim().to_string())
        })
        .collect();
    let get = |i: &str| -> Vec<&str> {
        instr
            .iter()
            .filter(|(k, _)| k == i)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("FROM"), ["scratch"]);
    assert_eq!(get("ENTRYPOINT"), [r#"["/kube-event"]"#]);
    // The uid the Deployment runs as.
    assert_eq!(get("USER"), ["65532:65532"]);
    // What COPY takes (the BINARY build argument's default) gets through .dockerignore.
    let binary = get("ARG")
        .iter()
        .find_map(|a| a.strip_prefix("BINARY="))
        .expect("ARG BINARY=<path of the static binary>");
    assert_eq!(
        binary,
        "target/x86_64-unknown-linux-musl/release/kube-event"
    );
    assert_eq!(get("COPY"), ["${BINARY} /kube-event"]);
    let ignore: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    assert_eq!(ignore, ["*".to_string(), format!("!{binary}")]);
}
