//! End-to-end suite: runs against a real kube-apiserver (the local control plane of
//! `hack/controlplane.sh`, or any cluster given by `KUBECONFIG` with `SFM_USE_EXISTING_CLUSTER=1`) and a
//! real PostgreSQL server. `make test` starts both; run alone with `hack/test-env.sh cargo test --test e2e`.
//!
//! Every test works in its own namespace so the tests can run in parallel on one cluster.

#[path = "common/samples.rs"]
mod samples;

mod e2e {
    pub mod api;
    pub mod chart;
    pub mod cluster;
    pub mod controlplane;
    pub mod crds;
    pub mod flow;
    pub mod isolation;
    pub mod nhn_uploader;
    pub mod operator;
    pub mod operator_faults;
    pub mod processes;
    pub mod wave;
}
