// Package demo is "meshgate demo": it builds a lab of five pods (package
// topology) on this machine, starts ordinary apps in them (package
// demoapp), makes a mesh CA and a certificate for each meshed pod, enrolls
// those pods while their apps run (package enroll), sends real traffic
// between them (by address over IPv4 and IPv6, a verified download, raw
// TCP echo sessions, requests by name balanced by the client's sidecar, a
// plaintext attempt from a pod without a sidecar), and reads what each
// sidecar saw from its own /metrics.
//
// Run returns a Report and tells Options.Progress each step as it is
// done, with the report so far, so that the command prints as the demo
// goes; the words are the command's. Everything Run creates (rules,
// sidecars, namespaces, files) is removed before it returns, on failure
// and on cancellation too.
package demo
