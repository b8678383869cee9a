//go:build tools

// Package tools pins the Kubernetes commands the test control plane builds.
// k8s.io/kubernetes cannot be `go install`ed directly (its go.mod replaces the
// staging modules with local paths), so this module requires it and replaces
// every staging module with its published v0.x twin.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
