// Package testnet holds network helpers for tests: loopback ports to
// give a server whose address a test must know before it starts.
package testnet
