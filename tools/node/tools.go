//go:build tools

// Package tools pins the Kubernetes node commands built for the local node (hack/node.sh): kubelet,
// kube-scheduler and kube-proxy, from the same k8s.io/kubernetes release as tools/controlplane.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
