//go:build tools

// Package tools pins helm.sh/helm/v3/cmd/helm for the test control plane.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
