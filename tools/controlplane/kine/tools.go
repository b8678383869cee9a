//go:build tools

// Package tools pins github.com/k3s-io/kine for the test control plane.
package tools

import _ "github.com/k3s-io/kine"
