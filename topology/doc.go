// Package topology builds a small lab of "pods" on one Linux machine: each
// pod is a network namespace with an eth0 joined by a veth pair to a bridge
// that lives in a namespace of its own, with IPv4 and IPv6 addresses
// assigned inside. meshgate demo, the end-to-end tests and the load harness
// run real workloads, real sidecars and real clients in such a lab.
//
// Everything a Lab creates (namespaces, links, processes) is recorded and
// removed by Close, which is safe to call after a partial failure. Traffic
// in a lab only ever goes to addresses assigned inside its own namespaces.
package topology
