// Package sockmark puts the sidecar's socket mark (SO_MARK) on the
// sockets it opens.
//
// The capture rules that 'meshgate redirect' installs exempt the proxy's
// own traffic by its mark or by its UID, and either alone must suffice
// (shared/DESIGN.md §3). So every socket the sidecar process opens — the
// data path's connections in package proxy, the DNS proxy's upstream
// questions and TXT look-ups in package discovery, the CA and Workload
// API clients in package mtls — carries the configured mark, set by
// Control: one implementation of setting SO_MARK for every package. A
// socket that missed it would, with the sidecar running as root (which
// no UID rule covers), be captured back to the sidecar itself.
//
// The package is a leaf: it imports nothing of meshgate, so that proxy,
// discovery and mtls can all use it.
package sockmark
