#!/usr/bin/env bash
# Build the real control-plane binaries the end-to-end tests, benchmarks and
# deploy checks run: kube-apiserver, kube-scheduler and kubelet (Kubernetes 1.34),
# kine, kwok and helm; and for the chart installed on the real node,
# kube-controller-manager and kubectl (module kubernetes-cluster, same Kubernetes). Each binary is built from its wrapper module in this folder
# into a cache OUTSIDE the repository, keyed by a hash of that module's
# go.mod/go.sum/tools.go, and reused when the key is unchanged.
#
# Usage: tools/controlplane/build.sh            # builds what is missing
#        tools/controlplane/build.sh --print    # prints the bin dir only
# The bin dir (symlinks to the cached binaries) is printed on the last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${FLEXAI_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/flexai}/controlplane
bindir=$cache/bin
mkdir -p "$bindir"
# One build at a time: two checkouts building the same binary would race on its .tmp file.
exec 9>"$cache/.lock"
flock 9

k8s_version=$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' "$here/kubernetes/go.mod")
k8s_minor=$(echo "$k8s_version" | cut -d. -f2)
k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$k8s_minor -X k8s.io/component-base/version.gitTreeState=clean"

k8s_cluster_version=$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' "$here/kubernetes-cluster/go.mod")
if [[ $k8s_cluster_version != "$k8s_version" ]]; then
  echo "tools/controlplane: kubernetes-cluster requires k8s.io/kubernetes $k8s_cluster_version," \
       "kubernetes $k8s_version: bump both (and their replace blocks) together" >&2
  exit 1
fi

key_of() { cat "$here/$1/go.mod" "$here/$1/go.sum" "$here/$1/tools.go" | sha256sum | cut -c1-16; }

# build MODULE_DIR BINARY PACKAGE [LDFLAGS] [CGO]
build() {
  local mod=$1 bin=$2 pkg=$3 ldflags=${4:--s -w} cgo=${5:-0}
  local out=$cache/$mod-$(key_of "$mod")
  if [[ ! -x $out/$bin ]]; then
    echo "building $bin from $mod (cache $out)" >&2
    mkdir -p "$out"
    (cd "$here/$mod" && CGO_ENABLED=$cgo go build -trimpath -ldflags "$ldflags" -o "$out/$bin.tmp" "$pkg")
    mv "$out/$bin.tmp" "$out/$bin"
  fi
  ln -sfn "$out/$bin" "$bindir/$bin"
}

if [[ ${1:-} != --print ]]; then
  build kine kine github.com/k3s-io/kine "-s -w" 1   # go-sqlite3 needs cgo
  build kwok kwok sigs.k8s.io/kwok/cmd/kwok
  build helm helm helm.sh/helm/v3/cmd/helm
  build kubernetes kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "$k8s_ldflags"
  build kubernetes kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"
  build kubernetes kubelet k8s.io/kubernetes/cmd/kubelet "$k8s_ldflags"   # tests/realnode
  # tests/realnode/test_helm_install.py: Deployments and DaemonSets, and the README's kubectl
  build kubernetes-cluster kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
  build kubernetes-cluster kubectl k8s.io/kubernetes/cmd/kubectl "$k8s_ldflags"
fi
echo "$bindir"
