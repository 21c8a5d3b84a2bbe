// Command etcd is etcd's server, built from the Go module proxy for
// meshgate's webhook e2e test (issue 14). 'go install
// go.etcd.io/etcd/server/v3@v3.6.16' refuses (etcd's go.mod has replace
// directives), so this module requires the server and calls its main.
// Built by scripts/k8s-assets.sh ('make k8s-assets'), outside the repo.
package main
