//! The control plane is real: garbage collection, namespace deletion and service-account tokens work
//! as in a cluster, which the operator's owner references, finalizers and the chart's RBAC rely on.

use super::cluster::*;

#[test]
fn deleting_an_owner_garbage_collects_its_children() {
    let ns = TestNamespace::new("gc");
    kubectl_ok(&["-n", &ns.name, "create", "configmap", "owner"], None);
    let uid = kubectl_ok(
        &[
            "-n",
            &ns.name,
            "get",
            "configmap",
            "owner",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        None,
    );
    let child = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"child","namespace":"{}",
            "ownerReferences":[{{"apiVersion":"v1","kind":"ConfigMap","name":"owner","uid":"{}"}}]}}}}"#,
        ns.name, uid
    );
    kubectl_ok(&["apply", "-f", "-"], Some(&child));
    kubectl_ok(&["-n", &ns.name, "delete", "configmap", "owner"], None);
    let gone = eventually(PATIENCE, || {
        !kubectl(&["-n", &ns.name, "get", "configmap", "child"], None)
            .status
            .success()
    });
    assert!(
        gone,
        "the garbage collector did not delete the child of a deleted owner"
    );
}

#[test]
fn deleting_a_namespace_finishes() {
    let ns = TestNamespace::new("nsdel");
    kubectl_ok(&["-n", &ns.name, "create", "configmap", "something"], None);
    kubectl_ok(
        &[
            "-n",
            &ns.name,
            "create",
            "secret",
            "generic",
            "s",
            "--from-literal=a=b",
        ],
        None,
    );
    kubectl_ok(&["delete", "namespace", &ns.name, "--timeout=90s"], None);
    let out = kubectl(&["get", "namespace", &ns.name], None);
    assert!(
        !out.status.success(),
        "the namespace still exists after delete returned"
    );
}

#[test]
fn service_account_tokens_authenticate_and_rbac_applies() {
    let ns = TestNamespace::new("token");
    // The service-account controller creates `default` in every new namespace.
    assert!(
        eventually(PATIENCE, || kubectl(
            &["-n", &ns.name, "get", "serviceaccount", "default"],
            None
        )
        .status
        .success()),
        "no default ServiceAccount: the service-account controller is not running"
    );
    kubectl_ok(
        &["-n", &ns.name, "create", "serviceaccount", "reader"],
        None,
    );
    kubectl_ok(
        &[
            "-n",
            &ns.name,
            "create",
            "role",
            "read-cm",
            "--verb=get,list",
            "--resource=configmaps",
        ],
        None,
    );
    kubectl_ok(
        &[
            "-n",
            &ns.name,
            "create",
            "rolebinding",
            "read-cm",
            "--role=read-cm",
            &format!("--serviceaccount={}:reader", ns.name),
        ],
        None,
    );
    let token = kubectl_ok(&["-n", &ns.name, "create", "token", "reader"], None);
    let token = token.trim();
    let as_reader = |args: &[&str]| kubectl_with_token(token, args);
    assert!(
        as_reader(&["-n", &ns.name, "get", "configmaps"])
            .status
            .success()
    );
    let denied = as_reader(&["-n", &ns.name, "get", "secrets"]);
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("forbidden"));
}
