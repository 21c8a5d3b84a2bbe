#!/usr/bin/env bash
# Build the control plane of the webhook e2e test (e2e/webhook_test.go):
# kube-apiserver, kube-controller-manager and etcd, from the Go module proxy
# (no binary download is needed), with the modules in scripts/k8s-assets/:
# kubernetes/ (one module, a main per binary, so the controller manager
# reuses what the API server's build compiled) and etcd/. They go into a cache
# outside the repo, keyed by their versions, and are built once: a cold
# build takes a few minutes, a warm one nothing. The directory, for
# KUBEBUILDER_ASSETS (controller-runtime's envtest), is printed on stdout.
#
# Usage: scripts/k8s-assets.sh [--print-dir]
#   --print-dir  print the directory only, build nothing
# Environment:
#   MESHGATE_K8S_ASSETS  the directory to use instead of
#                        ${XDG_CACHE_HOME:-$HOME/.cache}/meshgate/k8s-<version>-etcd-<version>
#   GO                   the go command (default go)
set -euo pipefail
src=$(cd "$(dirname "$0")/k8s-assets" && pwd)
go=${GO:-go}
# version MODULE GOMOD: the version GOMOD requires MODULE at.
version() { awk -v m="$1" '$1 == "replace" { exit } { for (i = 1; i < NF; i++) if ($i == m) { print $(i + 1); exit } }' "$2"; }
k8s=$(version k8s.io/kubernetes "$src/kubernetes/go.mod")
etcd=$(version go.etcd.io/etcd/server/v3 "$src/etcd/go.mod")
if [ -z "$k8s" ] || [ -z "$etcd" ]; then
	echo "k8s-assets: no k8s.io/kubernetes or go.etcd.io/etcd/server/v3 requirement in $src/*/go.mod" >&2
	exit 1
fi
dir=${MESHGATE_K8S_ASSETS:-${XDG_CACHE_HOME:-$HOME/.cache}/meshgate/k8s-$k8s-etcd-$etcd}

if [ "${1:-}" = --print-dir ]; then
	echo "$dir"
	exit 0
fi
# A cache from before kube-controller-manager was added lacks it, and is
# rebuilt whole (with a warm Go build cache the other two only relink).
if [ -x "$dir/kube-apiserver" ] && [ -x "$dir/kube-controller-manager" ] && [ -x "$dir/etcd" ]; then
	echo "k8s-assets: kube-apiserver, kube-controller-manager $k8s and etcd $etcd are in $dir" >&2
	echo "$dir"
	exit 0
fi

# Build into a sibling directory and rename it into place, so an
# interrupted build never leaves a directory that looks complete.
mkdir -p "$(dirname "$dir")"
tmp=$(mktemp -d "$dir.partial.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "k8s-assets: building kube-apiserver, kube-controller-manager $k8s and etcd $etcd into $dir (a few minutes, once)" >&2
start=$SECONDS
# build MODULE-DIR PACKAGE BINARY [GO-BUILD-FLAGS...]: static (no cgo) and
# without VCS stamping (git refuses to report on a clone another user owns).
build() {
	(cd "$src/$1" && CGO_ENABLED=0 GOWORK=off "$go" build -trimpath -buildvcs=false -o "$tmp/$3" "${@:4}" "$2")
}
# Kubernetes' binaries report their version (the API server's GET /version,
# the controller manager's log) from variables that its release build
# sets; without them they say v0.0.0-master.
minor=${k8s#v*.}
kv=k8s.io/component-base/version
kflags="-X $kv.gitVersion=$k8s -X $kv.gitMajor=$(echo "${k8s#v}" | cut -d. -f1) -X $kv.gitMinor=${minor%%.*} -X $kv.gitTreeState=clean"
build kubernetes ./kube-apiserver kube-apiserver -ldflags "$kflags"
build kubernetes ./kube-controller-manager kube-controller-manager -ldflags "$kflags"
build etcd . etcd
chmod 755 "$tmp"
rm -rf "$dir"
mv "$tmp" "$dir"
echo "k8s-assets: built in $((SECONDS - start)) s" >&2
echo "$dir"
