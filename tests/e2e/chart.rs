//! The Helm chart `charts/sfm-migration` against the real API server: `helm lint`; `helm template` with
//! the default and with non-default values, applied with server-side dry run (every object accepted,
//! no Pod Security warning under the "restricted" profile); kubeconform against schemas taken from the
//! same server; the chart's CRDs equal `crds/`; the chart's RBAC applied for real and checked verb by
//! verb with ServiceAccount tokens (cluster-wide, and with `operator.watchNamespace` namespaced); the
//! binaries accept the arguments the chart gives them; the operator run under the chart's own
//! identity (and Lease) bringing the shipped examples to Ready and, with a Manual approval, to
//! Operational; the Argo CD health checks run with Lua 5.4 on those live objects.
//!
//! `chart_kubeconfig` gives other tests a kubeconfig of the chart's operator or API identity.
#![allow(dead_code)] // chart_kubeconfig and the helpers are for other test modules too

use super::cluster::*;
use super::processes::*;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The release name every test renders with: objects are `sfm-migration-operator`, `sfm-migration-api`.
pub const RELEASE: &str = "sfm-migration";

fn chart_dir() -> String {
    repo_path("charts/sfm-migration")
}

/// helm and kubeconform, built from their Go modules by `hack/tools.sh` (cached; once per process).
fn tools_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(repo_path("hack/tools.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("hack/tools.sh runs");
        assert!(out.status.success(), "hack/tools.sh failed");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

fn run(program: &str, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{program} does not start: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn helm(args: &[&str]) -> Output {
    run(&format!("{}/helm", tools_bin()), args, None, &[])
}

fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `helm template` of the chart into `namespace`, with extra arguments (values files, --set, --show-only).
pub fn render(namespace: &str, extra: &[&str]) -> String {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        RELEASE,
        chart.as_str(),
        "--namespace",
        namespace,
    ];
    args.extend_from_slice(extra);
    helm_ok(&args)
}

/// The YAML documents of a rendering, empty ones left out.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("helm renders valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the rendering has no {kind} {name}"))
}

/// Runs kubectl with another kubeconfig (a chart identity's).
pub fn kubectl_as(kubeconfig: &str, args: &[&str], stdin: Option<&str>) -> Output {
    run("kubectl", args, stdin, &[("KUBECONFIG", kubeconfig)])
}

fn kubectl_as_ok(kubeconfig: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl_as(kubeconfig, args, stdin);
    assert!(
        out.status.success(),
        "kubectl {} (as {kubeconfig}) failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ensure_namespace(namespace: &str) {
    let manifest = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n");
    kubectl_ok(
        &[
            "apply",
            "--server-side",
            "--field-manager=sfm-e2e-chart",
            "-f",
            "-",
        ],
        Some(&manifest),
    );
}

/// Renders the chart's ServiceAccount, Roles, ClusterRoles and bindings of `component` ("operator" or
/// "api") for a release in `namespace`, applies them for real, and writes a kubeconfig that
/// authenticates with a token of that ServiceAccount (server and CA from the admin kubeconfig).
/// Returns the kubeconfig's path. Safe to call repeatedly and from parallel tests.
pub fn chart_kubeconfig(component: &str, namespace: &str) -> String {
    chart_kubeconfig_with(component, namespace, &[])
}

/// `chart_kubeconfig` with more `helm template` arguments (e.g. `--set operator.watchNamespace=...`).
/// The kubeconfig's file name depends on component and namespace only.
pub fn chart_kubeconfig_with(component: &str, namespace: &str, extra: &[&str]) -> String {
    assert!(
        component == "operator" || component == "api",
        "component is operator or api"
    );
    ensure_namespace(namespace);
    let template = format!("templates/{component}/rbac.yaml");
    let mut args = vec!["--show-only", template.as_str()];
    args.extend_from_slice(extra);
    let rbac = render(namespace, &args);
    assert!(
        rbac.contains("kind: ServiceAccount"),
        "no ServiceAccount rendered"
    );
    kubectl_ok(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=sfm-e2e-chart",
            "-f",
            "-",
        ],
        Some(&rbac),
    );
    let service_account = format!("{RELEASE}-{component}");
    let token = kubectl_ok(
        &[
            "-n",
            namespace,
            "create",
            "token",
            &service_account,
            "--duration=12h",
        ],
        None,
    );
    let (server, ca) = server_and_ca();
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": service_account, "user": {"token": token.trim()}}],
        "contexts": [{"name": "chart", "context": {"cluster": "cluster", "user": service_account, "namespace": namespace}}],
        "current-context": "chart",
    });
    let dir = match std::env::var("SFM_TEST_WORK_DIR") {
        Ok(work) => format!("{work}/chart-kubeconfigs"),
        Err(_) => repo_path("target/e2e-kubeconfigs"),
    };
    std::fs::create_dir_all(&dir).unwrap();
    let path = format!("{dir}/{component}-{namespace}.kubeconfig");
    let temporary = format!(
        "{path}.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    );
    std::fs::write(&temporary, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    std::fs::rename(&temporary, &path).unwrap();
    path
}

#[test]
fn helm_lint_passes_with_default_and_non_default_values() {
    let chart = chart_dir();
    let values = format!("{chart}/ci/nondefault-values.yaml");
    let out = helm_ok(&["lint", "--strict", &chart]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let out = helm_ok(&["lint", "--strict", &chart, "-f", &values]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn the_chart_crds_are_the_generated_crds() {
    let generated = std::fs::read_to_string(repo_path("crds/sfm.nhn.no.yaml")).unwrap();
    let chart =
        std::fs::read_to_string(repo_path("charts/sfm-migration/crds/sfm.nhn.no.yaml")).unwrap();
    assert!(
        generated == chart,
        "charts/sfm-migration/crds/ differs from crds/: run `make crds`"
    );
}

#[test]
fn values_outside_the_schema_and_unsafe_combinations_are_refused() {
    let chart = chart_dir();
    for (args, expected) in [
        (vec!["--set", "operator.replica=2"], "additional properties"),
        (
            vec![
                "--set",
                "operator.replicas=2",
                "--set",
                "operator.leaderElection.enabled=false",
            ],
            "leaderElection",
        ),
        (vec!["--set", "api.port=70000"], "maximum"),
        (
            vec!["--set", "networkPolicy.postgresql.inCluster.enabled=true"],
            "podLabels",
        ),
        (vec!["--set", "api.decryptionKeys=null"], "decryptionKeys"),
        // DPoP proofs are checked against the configured URL, never one guessed from Host.
        (
            vec!["--set", "api.trustedIssuers[0]=https://helseid-sts.nhn.no"],
            "api.publicUrl is required",
        ),
        (vec!["--set", "api.maxConnections=0"], "maxConnections"),
    ] {
        let mut all = vec!["template", RELEASE, chart.as_str(), "-n", "sfm-system"];
        all.extend(args.iter().copied());
        let out = helm(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "helm accepted {args:?}");
        assert!(
            stderr.contains(expected),
            "helm refused {args:?} without naming {expected}: {stderr}"
        );
    }
}

/// A structural CustomResourceDefinition for the Prometheus Operator's ServiceMonitor with the fields
/// of its upstream schema the chart uses (selector, namespaceSelector, endpoints), so the server
/// checks the chart's ServiceMonitor strictly. Installed only where no ServiceMonitor CRD exists.
const SERVICE_MONITOR_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
  labels: {sfm.nhn.no/test-fixture: "true"}
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          required: [spec]
          properties:
            spec:
              type: object
              required: [selector]
              properties:
                jobLabel: {type: string}
                selector:
                  type: object
                  properties:
                    matchLabels: {type: object, additionalProperties: {type: string}}
                    matchExpressions:
                      type: array
                      items:
                        type: object
                        required: [key, operator]
                        properties:
                          key: {type: string}
                          operator: {type: string}
                          values: {type: array, items: {type: string}}
                namespaceSelector:
                  type: object
                  properties:
                    any: {type: boolean}
                    matchNames: {type: array, items: {type: string}}
                endpoints:
                  type: array
                  items:
                    type: object
                    properties:
                      port: {type: string}
                      path: {type: string}
                      scheme: {type: string, enum: [http, https]}
                      interval: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                      scrapeTimeout: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                      honorLabels: {type: boolean}
"#;

fn ensure_service_monitor_crd() {
    let existing = kubectl(
        &[
            "get",
            "crd",
            "servicemonitors.monitoring.coreos.com",
            "-o",
            "jsonpath={.metadata.labels.sfm\\.nhn\\.no/test-fixture}",
        ],
        None,
    );
    if existing.status.success() && String::from_utf8_lossy(&existing.stdout).trim() != "true" {
        return; // a real Prometheus Operator CRD: use it, never replace it
    }
    kubectl_ok(
        &[
            "apply",
            "--server-side",
            "--field-manager=sfm-e2e-chart",
            "-f",
            "-",
        ],
        Some(SERVICE_MONITOR_CRD),
    );
    kubectl_ok(
        &[
            "wait",
            "--for=condition=Established",
            WAIT_TIMEOUT,
            "crd/servicemonitors.monitoring.coreos.com",
        ],
        None,
    );
}

/// A namespace that warns (and enforces for pods) under the "restricted" Pod Security Standard.
fn restricted_namespace(prefix: &str) -> TestNamespace {
    let ns = TestNamespace::new(prefix);
    kubectl_ok(
        &[
            "label",
            "namespace",
            &ns.name,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/warn=restricted",
        ],
        None,
    );
    ns
}

/// Server-side dry run of a rendering; returns kubectl's stderr (warnings) after asserting success.
fn dry_run(rendered: &str) -> String {
    let out = kubectl(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "--field-manager=sfm-e2e-chart",
            "-f",
            "-",
        ],
        Some(rendered),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "the API server refused the rendered chart: {stderr}"
    );
    stderr
}

#[test]
fn the_rendered_chart_is_accepted_by_the_api_server_with_default_and_non_default_values() {
    install_crds();
    ensure_service_monitor_crd();
    let release = restricted_namespace("chart-dry");
    let postgres = TestNamespace::new("chart-pg");
    let values = format!("{}/ci/nondefault-values.yaml", chart_dir());
    let postgres_namespace = format!(
        "networkPolicy.postgresql.inCluster.namespace={}",
        postgres.name
    );
    let watch_namespace = format!("operator.watchNamespace={}", postgres.name);

    for (label, extra) in [
        ("default", vec!["--include-crds"]),
        (
            "non-default",
            vec![
                "--include-crds",
                "-f",
                &values,
                "--set",
                &postgres_namespace,
                "--set",
                &watch_namespace,
            ],
        ),
    ] {
        let rendered = render(&release.name, &extra);
        let out = dry_run(&rendered);
        assert!(
            !out.contains("PodSecurity"),
            "{label} values violate the restricted Pod Security Standard: {out}"
        );
        let docs = documents(&rendered);
        let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        for kind in [
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
            "Service",
            "NetworkPolicy",
            "PodDisruptionBudget",
        ] {
            assert!(kinds.contains(kind), "{label}: no {kind} rendered");
        }
        for optional in ["ServiceMonitor", "Ingress"] {
            assert_eq!(
                kinds.contains(optional),
                label == "non-default",
                "{label}: a {optional} only when enabled"
            );
        }
        check_pod_security_and_probes(&docs, label);
    }

    // The check can fail: a container that may escalate privileges draws the warning.
    let unsafe_render = render(
        &release.name,
        &[
            "--set",
            "containerSecurityContext.allowPrivilegeEscalation=true",
        ],
    );
    assert!(dry_run(&unsafe_render).contains("would violate PodSecurity"));
}

/// What the rendered Deployments must hold, beyond what the API server checks.
fn check_pod_security_and_probes(docs: &[Value], label: &str) {
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), 2, "{label}: the operator and the API");
    for deployment in deployments {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        for container in pod["containers"].as_array().unwrap() {
            let security = &container["securityContext"];
            assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{name}");
            for probe in ["livenessProbe", "readinessProbe"] {
                assert!(
                    container[probe]["httpGet"]["path"].is_string(),
                    "{name} {probe}"
                );
            }
            for bound in ["requests", "limits"] {
                assert!(
                    container["resources"][bound]["cpu"].is_string(),
                    "{name} {bound}"
                );
                assert!(
                    container["resources"][bound]["memory"].is_string(),
                    "{name} {bound}"
                );
            }
        }
    }
    let operator = find(docs, "Deployment", &operator_name(docs));
    let container = &operator["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(args[0], "run");
    assert!(
        args.iter()
            .any(|a| a.starts_with("--leader-election-lease="))
    );
    let replicas = operator["spec"]["replicas"].as_i64().unwrap();
    assert!(
        label == "default" || replicas > 1,
        "non-default values run several operators"
    );
    let env = container["env"].as_array().unwrap();
    let admin = env.iter().find(|e| e["name"] == "SFM_DEFAULT_ADMIN_URL");
    if label == "default" {
        assert!(admin.is_none(), "no default server unless one is named");
    } else {
        let admin = admin.expect("the default server's URI comes from the named Secret");
        assert_eq!(
            admin["valueFrom"]["secretKeyRef"]["name"],
            "sfm-postgres-admin"
        );
        assert!(admin.get("value").is_none(), "never a URI in plain text");
    }
    // Each decryption key is mounted and named by one --decryption-key.
    let api = docs
        .iter()
        .find(|d| {
            d["kind"] == "Deployment"
                && d["metadata"]["labels"]["app.kubernetes.io/component"] == "api"
        })
        .unwrap();
    let pod = &api["spec"]["template"]["spec"];
    let key_args: Vec<&str> = pod["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .filter_map(|a| a.strip_prefix("--decryption-key="))
        .collect();
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    assert!(!key_args.is_empty());
    for path in &key_args {
        assert!(
            mounts.iter().any(
                |m| path.starts_with(m["mountPath"].as_str().unwrap()) && m["readOnly"] == true
            ),
            "{label}: {path} is not on a read-only mount"
        );
    }
}

fn operator_name(docs: &[Value]) -> String {
    docs.iter()
        .find(|d| {
            d["kind"] == "Deployment"
                && d["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
        })
        .and_then(|d| d["metadata"]["name"].as_str())
        .unwrap()
        .to_owned()
}

#[test]
fn the_api_accepts_ingress_only_on_its_port_and_postgresql_only_from_the_allowed_pods() {
    let values = format!("{}/ci/nondefault-values.yaml", chart_dir());
    let docs = documents(&render("sfm-system", &["-f", &values]));
    let api = find(&docs, "NetworkPolicy", "sfm-api");
    let ingress = api["spec"]["ingress"].as_array().unwrap();
    let ports: BTreeSet<i64> = ingress
        .iter()
        .flat_map(|rule| rule["ports"].as_array().unwrap().iter())
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, BTreeSet::from([9443]), "the API's one port only");
    assert!(
        ingress.iter().all(|rule| rule["from"].is_array()),
        "every port names its sources"
    );

    let operator = find(&docs, "NetworkPolicy", "sfm-operator");
    let ingress = operator["spec"]["ingress"].as_array().unwrap();
    assert_eq!(
        ingress.len(),
        1,
        "the operator admits /metrics scrapes only"
    );
    assert_eq!(
        ingress[0]["ports"],
        json!([{"protocol": "TCP", "port": 9090}])
    );
    assert_eq!(
        ingress[0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );

    let postgres = find(&docs, "NetworkPolicy", "sfm-postgresql");
    assert_eq!(postgres["metadata"]["namespace"], "sfm-postgres");
    let from = postgres["spec"]["ingress"][0]["from"].as_array().unwrap();
    let components: BTreeSet<&str> = from
        .iter()
        .filter_map(|peer| {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"].as_str()
        })
        .collect();
    assert_eq!(components, BTreeSet::from(["api", "operator"]));
    assert!(
        from.iter()
            .any(|peer| peer["podSelector"]["matchExpressions"][0]["key"]
                == "sfm.nhn.no/application-database")
    );

    // Default values: the API port is open to any source, nothing else is.
    let docs = documents(&render("sfm-system", &[]));
    let api = find(&docs, "NetworkPolicy", "sfm-migration-api");
    let open: Vec<&Value> = api["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| rule.get("from").is_none())
        .collect();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["ports"], json!([{"protocol": "TCP", "port": 8080}]));
    assert_eq!(api["spec"]["ingress"].as_array().unwrap().len(), 1);
}

/// JSON schemas for kubeconform, made from the live API server's OpenAPI v2 document (this machine
/// has no network for kubeconform's default schema registry): one file per kind, named as kubeconform
/// looks them up, with every object closed (`additionalProperties: false`) as in its strict mode.
fn kubeconform_schemas(dir: &std::path::Path) {
    // A CRD's schema is published in /openapi/v2 a moment after it is Established (another test may
    // just have installed one): read it once it has the kinds the rendered files use.
    let published = |openapi: &Value, group: &str, kind: &str| {
        openapi["definitions"]
            .as_object()
            .into_iter()
            .flat_map(|definitions| definitions.values())
            .filter_map(|definition| definition["x-kubernetes-group-version-kind"].as_array())
            .flatten()
            .any(|gvk| gvk["group"] == group && gvk["kind"] == kind)
    };
    let mut openapi = Value::Null;
    assert!(
        eventually(PATIENCE, || {
            openapi =
                serde_json::from_str(&kubectl_ok(&["get", "--raw", "/openapi/v2"], None)).unwrap();
            [
                ("monitoring.coreos.com", "ServiceMonitor"),
                ("sfm.nhn.no", "MigrationDatabase"),
                ("sfm.nhn.no", "MigrationKey"),
            ]
            .iter()
            .all(|(group, kind)| published(&openapi, group, kind))
        }),
        "the CRDs' schemas never appeared in /openapi/v2"
    );
    let definitions = openapi["definitions"].as_object().unwrap();
    fn refs(value: &Value, out: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.insert(r.trim_start_matches("#/definitions/").to_owned());
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    fn close(value: &mut Value) {
        match value {
            Value::Object(map) => {
                let int_or_string = map.get("format") == Some(&json!("int-or-string"))
                    || map.get("x-kubernetes-int-or-string") == Some(&json!(true));
                if int_or_string {
                    map.remove("type");
                    map.remove("format");
                    map.insert(
                        "oneOf".into(),
                        json!([{"type": "string"}, {"type": "integer"}]),
                    );
                }
                if map.contains_key("properties")
                    && !map.contains_key("additionalProperties")
                    && map.get("x-kubernetes-preserve-unknown-fields") != Some(&json!(true))
                {
                    map.insert("additionalProperties".into(), json!(false));
                }
                map.values_mut().for_each(close);
            }
            Value::Array(items) => items.iter_mut().for_each(close),
            _ => {}
        }
    }
    for (name, definition) in definitions {
        let Some(gvks) = definition["x-kubernetes-group-version-kind"].as_array() else {
            continue;
        };
        let mut needed = BTreeSet::from([name.clone()]);
        let mut queue = vec![name.clone()];
        while let Some(next) = queue.pop() {
            let mut found = BTreeSet::new();
            refs(&definitions[&next], &mut found);
            for r in found {
                if needed.insert(r.clone()) {
                    queue.push(r);
                }
            }
        }
        let mut defs: serde_json::Map<String, Value> = needed
            .into_iter()
            .map(|n| (n.clone(), definitions[&n].clone()))
            .collect();
        if let Some(q) = defs.get_mut("io.k8s.apimachinery.pkg.api.resource.Quantity") {
            *q = json!({"oneOf": [{"type": "string"}, {"type": "number"}]});
        }
        let mut schema = json!({"$ref": format!("#/definitions/{name}"), "definitions": defs});
        close(&mut schema);
        for gvk in gvks {
            let group = gvk["group"].as_str().unwrap_or("");
            let version = gvk["version"].as_str().unwrap();
            let kind = gvk["kind"].as_str().unwrap().to_lowercase();
            let suffix = match group.split('.').next().unwrap() {
                "" => format!("-{version}"),
                first => format!("-{}-{version}", first.to_lowercase()),
            };
            let path = dir.join(format!("{kind}{suffix}.json"));
            std::fs::write(path, serde_json::to_vec(&schema).unwrap()).unwrap();
        }
    }
}

#[test]
fn kubeconform_accepts_the_rendered_chart_and_the_examples() {
    install_crds();
    ensure_service_monitor_crd();
    let dir = tempfile::tempdir().unwrap();
    kubeconform_schemas(dir.path());
    let location = format!(
        "{}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
        dir.path().display()
    );
    let values = format!("{}/ci/nondefault-values.yaml", chart_dir());
    let mut inputs = vec![
        render("sfm-system", &["--include-crds"]),
        render("sfm-system", &["-f", &values]),
    ];
    for entry in std::fs::read_dir(repo_path("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            inputs.push(std::fs::read_to_string(path).unwrap());
        }
    }
    inputs.push(std::fs::read_to_string(repo_path("docs/argocd/argocd-cm.yaml")).unwrap());
    let kubeconform = format!("{}/kubeconform", tools_bin());
    for input in &inputs {
        let out = run(
            &kubeconform,
            &["-strict", "-summary", "-schema-location", &location, "-"],
            Some(input),
            &[],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "kubeconform refused: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("Invalid: 0, Errors: 0, Skipped: 0"),
            "{stdout}"
        );
    }
    // And it can fail: an unknown field under a Deployment's pod spec.
    let bad =
        render("sfm-system", &[]).replace("enableServiceLinks: false", "enableServiceLinkz: false");
    let out = run(
        &kubeconform,
        &["-strict", "-summary", "-schema-location", &location, "-"],
        Some(&bad),
        &[],
    );
    assert!(
        !out.status.success(),
        "kubeconform accepted an unknown field"
    );
}

/// One access question: verb, API group, resource, subresource, namespace ("" for cluster-wide),
/// resource name.
#[derive(Clone, Debug)]
struct Access {
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: &'static str,
    namespace: String,
    name: &'static str,
}

/// Asks the API server what the identity of `kubeconfig` may do, all questions in one request
/// (a List of SelfSubjectAccessReviews).
fn allowed(kubeconfig: &str, questions: &[Access]) -> Vec<bool> {
    let items: Vec<Value> = questions
        .iter()
        .map(|q| {
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {"verb": q.verb, "group": q.group, "resource": q.resource,
                    "subresource": q.subresource, "namespace": q.namespace, "name": q.name}}})
        })
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let out = kubectl_as_ok(
        kubeconfig,
        &["create", "-f", "-", "-o", "json"],
        Some(&list.to_string()),
    );
    // kubectl prints one JSON object per created review.
    let results: Vec<Value> = serde_json::Deserializer::from_str(&out)
        .into_iter::<Value>()
        .map(|v| v.unwrap())
        .collect();
    assert_eq!(results.len(), questions.len());
    results
        .iter()
        .map(|r| r["status"]["allowed"].as_bool().unwrap_or(false))
        .collect()
}

const VERBS: [&str; 8] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

/// Group, resource, subresource of everything either identity could plausibly touch.
const RESOURCES: [(&str, &str, &str); 16] = [
    ("sfm.nhn.no", "migrationdatabases", ""),
    ("sfm.nhn.no", "migrationdatabases", "status"),
    ("sfm.nhn.no", "migrationdatabases", "finalizers"),
    ("sfm.nhn.no", "migrationkeys", ""),
    ("sfm.nhn.no", "migrationkeys", "status"),
    ("sfm.nhn.no", "migrationkeys", "finalizers"),
    ("", "secrets", ""),
    ("", "configmaps", ""),
    ("networking.k8s.io", "networkpolicies", ""),
    ("events.k8s.io", "events", ""),
    ("", "events", ""),
    ("coordination.k8s.io", "leases", ""),
    ("", "pods", ""),
    ("", "serviceaccounts", ""),
    ("rbac.authorization.k8s.io", "roles", ""),
    ("apps", "deployments", ""),
];

/// The least privilege each identity needs, derived from src/operator/*.rs and the API's needs
/// (see the comments in charts/sfm-migration/templates/*/rbac.yaml). `home` is whether the namespace
/// is the release namespace; `name` the resource name asked about.
fn needed(component: &str, home: bool, access: (&str, &str, &str), verb: &str, name: &str) -> bool {
    let (group, resource, sub) = access;
    match (component, group, resource, sub) {
        ("operator", "sfm.nhn.no", "migrationdatabases", "") => {
            matches!(verb, "get" | "list" | "watch" | "patch")
        }
        ("operator", "sfm.nhn.no", "migrationkeys", "") => {
            matches!(verb, "get" | "list" | "watch" | "patch")
        }
        ("operator", "sfm.nhn.no", _, "status") => verb == "patch",
        ("operator", "sfm.nhn.no", _, "finalizers") => verb == "update",
        ("operator", "", "secrets", "") => {
            matches!(verb, "get" | "list" | "watch" | "create" | "patch")
                || (home && verb == "delete")
        }
        // Read by name first (ownership), then server-side apply, which needs create as well as
        // patch when it creates the object.
        ("operator", "", "configmaps", "") => matches!(verb, "get" | "create" | "patch"),
        ("operator", "networking.k8s.io", "networkpolicies", "") => {
            matches!(verb, "get" | "create" | "patch")
        }
        ("operator", "events.k8s.io", "events", "") => matches!(verb, "create" | "patch"),
        ("operator", "coordination.k8s.io", "leases", "") => {
            home && (verb == "create"
                || (name == "sfm-operator" && matches!(verb, "get" | "update" | "patch")))
        }
        ("api", "sfm.nhn.no", "migrationdatabases" | "migrationkeys", "") => {
            matches!(verb, "get" | "list" | "watch")
        }
        ("api", "sfm.nhn.no", "migrationdatabases", "status") => verb == "patch",
        ("api", "", "secrets", "") => home && matches!(verb, "get" | "list" | "watch"),
        _ => false,
    }
}

#[test]
fn each_identity_has_exactly_the_verbs_it_needs_and_the_api_reads_secrets_only_at_home() {
    install_crds();
    let home = TestNamespace::new("chart-rbac");
    let other = TestNamespace::new("chart-other");
    let mut checked = 0;
    for component in ["operator", "api"] {
        let kubeconfig = chart_kubeconfig(component, &home.name);
        let mut questions = Vec::new();
        let mut expected = Vec::new();
        for (namespace, is_home) in [(&home.name, true), (&other.name, false)] {
            for access in RESOURCES {
                for verb in VERBS {
                    for name in ["", "sfm-operator", "some-other-name"] {
                        if name.is_empty() && access.1 == "leases" && verb != "create" {
                            continue; // asked by name below
                        }
                        if !name.is_empty() && (access.1 != "leases" || verb == "create") {
                            continue;
                        }
                        questions.push(Access {
                            verb,
                            group: access.0,
                            resource: access.1,
                            subresource: access.2,
                            namespace: namespace.clone(),
                            name,
                        });
                        expected.push(needed(component, is_home, access, verb, name));
                    }
                }
            }
        }
        // Cluster-wide questions: list/watch across all namespaces (what `Api::all` watches need).
        for (access, verb) in [
            (("", "secrets", ""), "list"),
            (("", "secrets", ""), "get"),
            (("sfm.nhn.no", "migrationdatabases", ""), "watch"),
            (("sfm.nhn.no", "migrationkeys", ""), "list"),
            (("", "namespaces", ""), "list"),
            (
                ("apiextensions.k8s.io", "customresourcedefinitions", ""),
                "get",
            ),
        ] {
            questions.push(Access {
                verb,
                group: access.0,
                resource: access.1,
                subresource: access.2,
                namespace: String::new(),
                name: "",
            });
            expected.push(matches!(
                (component, access.1),
                (
                    "operator",
                    "secrets" | "migrationdatabases" | "migrationkeys"
                ) | ("api", "migrationdatabases" | "migrationkeys")
            ));
        }
        let answers = allowed(&kubeconfig, &questions);
        let wrong: Vec<String> = questions
            .iter()
            .zip(answers.iter().zip(&expected))
            .filter(|(_, (got, want))| got != want)
            .map(|(q, (got, want))| {
                format!(
                    "{component}: {} {}/{}{}{} in {:?} name {:?}: allowed={got}, needed={want}",
                    q.verb,
                    q.group,
                    q.resource,
                    if q.subresource.is_empty() { "" } else { "/" },
                    q.subresource,
                    q.namespace,
                    q.name
                )
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "RBAC differs from least privilege:\n{}",
            wrong.join("\n")
        );
        checked += questions.len();
    }
    assert!(checked > 500, "only {checked} questions asked");

    // In kubectl's own words, with the API's token: no Secrets outside its namespace.
    let api = chart_kubeconfig("api", &home.name);
    let can_i = |args: &[&str]| {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        String::from_utf8(kubectl_as(&api, &all, None).stdout)
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(can_i(&["get", "secrets", "-n", &home.name]), "yes");
    assert_eq!(can_i(&["get", "secrets", "-n", &other.name]), "no");
    assert_eq!(can_i(&["list", "secrets", "--all-namespaces"]), "no");
    assert_eq!(can_i(&["get", "secrets", "-n", "kube-system"]), "no");
    // And for real: reading a Secret of another namespace is refused.
    kubectl_ok(
        &[
            "-n",
            &other.name,
            "create",
            "secret",
            "generic",
            "not-yours",
            "--from-literal=a=b",
        ],
        None,
    );
    let out = kubectl_as(
        &api,
        &["-n", &other.name, "get", "secret", "not-yours"],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));
}

/// A JSON value as a Lua table constructor (what Argo CD hands a health script as `obj`).
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::from("\"");
            for byte in s.bytes() {
                match byte {
                    b'"' | b'\\' => {
                        out.push('\\');
                        out.push(byte as char)
                    }
                    0x20..=0x7e => out.push(byte as char),
                    _ => out.push_str(&format!("\\{byte:03}")),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!(
                    "[{}] = {}",
                    lua_literal(&Value::String(k.clone())),
                    lua_literal(v)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs an Argo CD health script with Lua 5.4 on `object`; returns (status, message).
fn argocd_health(script: &str, object: &Value) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let harness = dir.path().join("harness.lua");
    std::fs::write(
        &harness,
        format!(
            "obj = {}\nlocal hs = dofile({})\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
            lua_literal(object),
            lua_literal(&Value::String(repo_path(&format!("docs/argocd/{script}"))))
        ),
    )
    .unwrap();
    let out = Command::new("lua5.4")
        .arg(&harness)
        .output()
        .expect("lua5.4 is installed (hack/install-deps.sh installs Debian's lua5.4)");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').unwrap();
    (status.to_owned(), message.to_owned())
}

fn live(namespace: &str, resource: &str) -> Value {
    serde_json::from_str(&kubectl_ok(
        &["-n", namespace, "get", resource, "-o", "json"],
        None,
    ))
    .unwrap()
}

#[test]
fn argocd_health_checks_follow_phase_and_conditions() {
    let database = |status: Value| {
        json!({"apiVersion": "sfm.nhn.no/v1alpha1", "kind": "MigrationDatabase",
            "metadata": {"name": "x", "generation": 2}, "status": status})
    };
    let condition = |type_: &str, status: &str, reason: &str| json!({"type": type_, "status": status, "reason": reason, "message": format!("{type_} {reason}")});
    let mdb = "health-migrationdatabase.lua";
    let cases = [
        (
            json!({"apiVersion": "sfm.nhn.no/v1alpha1", "kind": "MigrationDatabase", "metadata": {"name": "x"}}),
            "Progressing",
        ),
        (
            database(
                json!({"phase": "Provisioning", "observedGeneration": 2, "conditions": [condition("Ready", "False", "Provisioning")]}),
            ),
            "Progressing",
        ),
        (
            database(
                json!({"phase": "Staging", "phaseReason": "Staging", "observedGeneration": 2, "conditions": [condition("Ready", "True", "Staging")]}),
            ),
            "Progressing",
        ),
        (
            database(
                json!({"phase": "Validated", "phaseReason": "AwaitingManualApproval", "observedGeneration": 2,
            "conditions": [condition("Ready", "True", "Staging"), condition("Operational", "False", "AwaitingManualApproval")]}),
            ),
            "Progressing",
        ),
        (
            database(
                json!({"phase": "Pending", "phaseReason": "AdminSecretMissing", "observedGeneration": 2,
            "conditions": [condition("Ready", "False", "AdminSecretMissing")]}),
            ),
            "Degraded",
        ),
        (
            database(
                json!({"phase": "Failed", "phaseReason": "NameCollision", "observedGeneration": 2,
            "conditions": [condition("Ready", "False", "NameCollision")]}),
            ),
            "Degraded",
        ),
        (
            database(json!({"phase": "Operational", "observedGeneration": 2,
            "conditions": [condition("Ready", "True", "Operational"), condition("Operational", "True", "Switched")]})),
            "Healthy",
        ),
        // A spec change the operator has not seen yet is not reported on from the old status.
        (
            database(json!({"phase": "Operational", "observedGeneration": 1,
            "conditions": [condition("Operational", "True", "Switched")]})),
            "Progressing",
        ),
    ];
    for (object, want) in cases {
        let (status, message) = argocd_health(mdb, &object);
        assert_eq!(status, want, "{object}: {message}");
    }
    let (_, message) = argocd_health(
        mdb,
        &database(json!({"phase": "Failed", "phaseReason": "NameCollision",
        "observedGeneration": 2, "conditions": [condition("Ready", "False", "NameCollision")]})),
    );
    assert!(message.contains("NameCollision"), "{message}");

    let key = |status: Value| json!({"kind": "MigrationKey", "metadata": {"name": "k"}, "status": status});
    for (object, want) in [
        (
            json!({"kind": "MigrationKey", "metadata": {"name": "k"}}),
            "Progressing",
        ),
        (
            key(json!({"phase": "Pending", "message": "waiting"})),
            "Progressing",
        ),
        (
            key(json!({"phase": "Active", "keyId": "abc", "secretName": "k-key"})),
            "Healthy",
        ),
        (key(json!({"phase": "Superseded"})), "Healthy"),
        (key(json!({"phase": "Expired"})), "Healthy"),
        (key(json!({"phase": "Revoked"})), "Healthy"),
        (key(json!({"phase": "Exploded"})), "Degraded"),
    ] {
        assert_eq!(
            argocd_health("health-migrationkey.lua", &object).0,
            want,
            "{object}"
        );
    }

    // The argocd-cm copy holds exactly these scripts.
    let cm: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_path("docs/argocd/argocd-cm.yaml")).unwrap(),
    )
    .unwrap();
    for (kind, script) in [
        ("MigrationDatabase", "health-migrationdatabase.lua"),
        ("MigrationKey", "health-migrationkey.lua"),
    ] {
        let file = std::fs::read_to_string(repo_path(&format!("docs/argocd/{script}"))).unwrap();
        assert_eq!(
            cm["data"][format!("resource.customizations.health.sfm.nhn.no_{kind}")],
            file,
            "docs/argocd/argocd-cm.yaml is out of date for {kind}"
        );
    }
}

const NS: &str = "sfm-organisations";
const MANUAL: &str = "mdb/sykehjem-nordby";

#[test]
fn the_operator_under_the_charts_identity_brings_the_examples_to_ready_and_a_manual_approval_to_operational()
 {
    let _turn = examples_turn();
    install_crds();
    let operator_kubeconfig = chart_kubeconfig("operator", "sfm-system");
    let api_kubeconfig = chart_kubeconfig("api", "sfm-system");
    let admin = admin_url();
    let mut operator = Process::start(
        env!("CARGO_BIN_EXE_sfm-operator"),
        &[
            "run",
            "--api-namespace",
            "sfm-system",
            "--watch-namespace",
            NS,
            // The chart's Lease: its Role allows only this one, in the release namespace.
            "--leader-election-namespace",
            "sfm-system",
            "--leader-election-lease",
            "sfm-operator",
            "--resync-seconds",
            "5",
        ],
        &[
            ("KUBECONFIG", operator_kubeconfig.as_str()),
            ("SFM_DEFAULT_ADMIN_URL", admin.as_str()),
            ("POD_NAME", "sfm-operator-chart-e2e"),
        ],
        "chart-operator",
    );

    // The examples exactly as shipped, in order, applied by the NHN operator (admin).
    for file in [
        "00-namespace.yaml",
        "05-postgres-admin-secret.yaml",
        "10-migrationdatabase.yaml",
        "11-migrationdatabase-manual.yaml",
        "12-migrationdatabase-nhn-uploader.yaml",
        "20-migrationkey.yaml",
        "21-migrationkey-manual.yaml",
    ] {
        kubectl_ok(
            &["apply", "-f", &repo_path(&format!("examples/{file}"))],
            None,
        );
    }
    kubectl_ok(
        &[
            "-n",
            NS,
            "wait",
            "--for=condition=Ready",
            "mdb/legekontoret-fjordby",
            MANUAL,
            "mdb/legesenter-sorvik",
            WAIT_TIMEOUT,
        ],
        None,
    );
    assert!(eventually(PATIENCE, || jsonpath(
        NS,
        "mkey/nordby-key-1",
        "{.status.phase}"
    ) == "Active"));

    // Reading the key as examples/README.md says: the Secret named in status, field `key`.
    let secret = jsonpath(NS, "mkey/nordby-key-1", "{.status.secretName}");
    let key: sfm_migration::contract::MigrationKeyToken = secret_field(NS, &secret, "key")
        .parse()
        .expect("a well-formed key");
    assert_eq!(
        key.key_id(),
        jsonpath(NS, "mkey/nordby-key-1", "{.status.keyId}")
    );
    assert_eq!(
        key.digest_hex(),
        jsonpath(NS, "mkey/nordby-key-1", "{.status.digest}")
    );

    let health = |resource: &str| {
        let script = if resource.starts_with("mdb/") {
            "health-migrationdatabase.lua"
        } else {
            "health-migrationkey.lua"
        };
        argocd_health(script, &live(NS, resource))
    };
    assert_eq!(health(MANUAL).0, "Progressing");
    assert_eq!(health("mkey/nordby-key-1").0, "Healthy");

    // The migration API's side, under the API's identity: it reads the migrator's Secret in its own
    // namespace, writes the validation record with activation requested (as verify and activate do)
    // and reports the validated digest in status.migration under its own field manager.
    let migrator = jsonpath(NS, MANUAL, "{.status.database.migratorSecret}");
    let (api_namespace, migrator_name) = migrator.split_once('/').unwrap();
    assert_eq!(api_namespace, "sfm-system");
    let encoded = kubectl_as_ok(
        &api_kubeconfig,
        &[
            "-n",
            "sfm-system",
            "get",
            "secret",
            migrator_name,
            "-o",
            "jsonpath={.data.uri}",
        ],
        None,
    );
    let migrator_uri = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded.trim()).unwrap(),
    )
    .unwrap();
    let digest = "e3".repeat(32);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::{Connection, PgConnection};
        let mut connection = PgConnection::connect(&migrator_uri)
            .await
            .expect("the migrator connects in staging");
        sqlx::query(
            "INSERT INTO sfm.validation (manifest_sha256, users_expected, users_stored, patients_expected, patients_stored, files_rejected, migration_key_id, activation_requested_at)
             VALUES (decode($1, 'hex'), 0, 0, 0, 0, 0, $2, now())",
        )
        .bind(&digest)
        .bind(key.key_id())
        .execute(&mut connection)
        .await
        .unwrap();
        connection.close().await.unwrap();
    });
    let status = json!({"apiVersion": "sfm.nhn.no/v1alpha1", "kind": "MigrationDatabase",
        "metadata": {"name": "sykehjem-nordby", "namespace": NS},
        "status": {"migration": {"validatedDigest": digest, "activationRequestedAt": "2026-01-01T00:00:00Z"}}});
    kubectl_as_ok(
        &api_kubeconfig,
        &[
            "apply",
            "--server-side",
            "--field-manager=sfm-migration-api",
            "--subresource=status",
            "-f",
            "-",
        ],
        Some(&status.to_string()),
    );
    assert!(
        eventually(PATIENCE, || jsonpath(NS, MANUAL, "{.status.phaseReason}")
            == "AwaitingManualApproval"),
        "the Manual database did not wait for approval: {}",
        jsonpath(NS, MANUAL, "{.status}")
    );
    let (status, message) = health(MANUAL);
    assert_eq!(status, "Progressing");
    assert!(message.contains("approvedDigest"), "{message}");

    // Approval with kubectl, exactly as examples/README.md shows it.
    let validated = jsonpath(NS, MANUAL, "{.status.migration.validatedDigest}");
    assert_eq!(validated, digest);
    kubectl_ok(
        &[
            "-n",
            NS,
            "patch",
            "mdb",
            "sykehjem-nordby",
            "--type",
            "merge",
            "-p",
            &format!("{{\"spec\":{{\"activation\":{{\"approvedDigest\":\"{validated}\"}}}}}}"),
        ],
        None,
    );
    kubectl_ok(
        &[
            "-n",
            NS,
            "wait",
            "--for=condition=Operational",
            MANUAL,
            WAIT_TIMEOUT,
        ],
        None,
    );
    assert_eq!(health(MANUAL).0, "Healthy");
    // The operator's operational path under its identity: the migrator's Secret deleted in the
    // release namespace, the access entry applied, the key expired.
    assert!(eventually(PATIENCE, || !kubectl(
        &["-n", "sfm-system", "get", "secret", migrator_name],
        None
    )
    .status
    .success()));
    assert_eq!(
        jsonpath(
            NS,
            "configmap/sykehjem-nordby-access",
            "{.data.helseIdClientId}"
        ),
        "nordby-sykehjem-sfm"
    );
    assert!(eventually(PATIENCE, || jsonpath(
        NS,
        "mkey/nordby-key-1",
        "{.status.phase}"
    ) == "Expired"));
    assert_eq!(health("mkey/nordby-key-1").0, "Healthy");

    // Give the operator one more resync, then: never a permission error in its log.
    std::thread::sleep(Duration::from_secs(6));
    operator.kill();
    let log = operator.log_text();
    // It took the chart's Lease (its Role allows only that one) and reconciled.
    assert!(log.contains("became the leader"), "{log}");
    assert!(log.contains("sfm-operator reconciling"), "{log}");
    let denied: Vec<&str> = log
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .collect();
    assert!(
        denied.is_empty(),
        "the chart's RBAC refused the operator:\n{}",
        denied.join("\n")
    );
}

#[test]
fn with_a_watch_namespace_the_operator_gets_roles_in_that_namespace_only() {
    install_crds();
    let home = TestNamespace::new("chart-home");
    let watched = TestNamespace::new("chart-watched");
    let elsewhere = TestNamespace::new("chart-elsewhere");
    let watch = format!("operator.watchNamespace={}", watched.name);
    let kubeconfig = chart_kubeconfig_with("operator", &home.name, &["--set", &watch]);
    let access = |verb, group, resource, subresource, namespace: &str| Access {
        verb,
        group,
        resource,
        subresource,
        namespace: namespace.to_owned(),
        name: "",
    };
    let cases = [
        (access("list", "", "secrets", "", &watched.name), true),
        (access("create", "", "secrets", "", &watched.name), true),
        (
            access(
                "patch",
                "sfm.nhn.no",
                "migrationdatabases",
                "status",
                &watched.name,
            ),
            true,
        ),
        (
            access("watch", "sfm.nhn.no", "migrationkeys", "", &watched.name),
            true,
        ),
        (
            access(
                "create",
                "networking.k8s.io",
                "networkpolicies",
                "",
                &watched.name,
            ),
            true,
        ),
        // The migrators' Secrets at home: read, create, delete; never list.
        (access("get", "", "secrets", "", &home.name), true),
        (access("create", "", "secrets", "", &home.name), true),
        (access("delete", "", "secrets", "", &home.name), true),
        (access("list", "", "secrets", "", &home.name), false),
        (access("delete", "", "secrets", "", &watched.name), false),
        // Nothing elsewhere, nothing cluster-wide.
        (access("get", "", "secrets", "", &elsewhere.name), false),
        (
            access(
                "list",
                "sfm.nhn.no",
                "migrationdatabases",
                "",
                &elsewhere.name,
            ),
            false,
        ),
        (access("list", "", "secrets", "", ""), false),
        (
            access("watch", "sfm.nhn.no", "migrationdatabases", "", ""),
            false,
        ),
    ];
    let questions: Vec<Access> = cases.iter().map(|(q, _)| q.clone()).collect();
    let answers = allowed(&kubeconfig, &questions);
    for ((question, want), got) in cases.iter().zip(answers) {
        assert_eq!(got, *want, "{question:?}");
    }
    // No ClusterRole was rendered for this release.
    let cluster_role = format!("{}-{RELEASE}-operator", home.name);
    assert!(
        !kubectl(&["get", "clusterrole", &cluster_role], None)
            .status
            .success()
    );
}

/// The container arguments of a rendered Deployment of `component`.
fn container_args(docs: &[Value], component: &str) -> Vec<String> {
    let deployment = docs
        .iter()
        .find(|d| {
            d["kind"] == "Deployment"
                && d["metadata"]["labels"]["app.kubernetes.io/component"] == component
        })
        .unwrap_or_else(|| panic!("no {component} Deployment"));
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_binaries_accept_the_arguments_the_chart_gives_them() {
    let values = format!("{}/ci/nondefault-values.yaml", chart_dir());
    for extra in [vec![], vec!["-f", values.as_str()]] {
        let docs = documents(&render("sfm-system", &extra));
        for (component, binary) in [
            ("operator", env!("CARGO_BIN_EXE_sfm-operator")),
            ("api", env!("CARGO_BIN_EXE_sfm-migration-api")),
        ] {
            // clap checks every argument and value before it acts on the trailing --help.
            let mut args = container_args(&docs, component);
            args.push("--help".into());
            let out = Command::new(binary).args(&args).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if component == "api" && stderr.contains("is not built yet") {
                // The API's binary on this branch is the placeholder; the check applies once it lands.
                eprintln!(
                    "sfm-migration-api is the placeholder here: its arguments were not checked"
                );
                continue;
            }
            assert!(
                out.status.success(),
                "{binary} refuses the chart's arguments {args:?}: {stderr}"
            );
        }
    }
    // And it can fail: an argument the operator does not know.
    let out = Command::new(env!("CARGO_BIN_EXE_sfm-operator"))
        .args(["run", "--no-such-flag", "--help"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
