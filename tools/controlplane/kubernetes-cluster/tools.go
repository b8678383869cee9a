//go:build tools

// Package tools pins the Kubernetes commands that a cluster running the helm chart needs
// beside the test control plane (tests/realnode/test_helm_install.py): the controller
// manager (Deployments, DaemonSets, service accounts, garbage collection) and kubectl (the
// steps of deploy/README.md). A module of its own, at the same Kubernetes version and with
// the same replacements as ../kubernetes, so that module's cache key and binaries stay as
// they are.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
