// Package e2e holds meshgate's end-to-end tests: real network namespaces
// joined by a bridge (package topology), real iptables rules installed by
// the real meshgate binary, real sidecars, and real clients such as curl.
//
// The tests need root. They skip with -short or when not root, and every
// namespace, link and process they create is removed at the end, even when
// a test fails. Traffic only goes to addresses assigned inside those
// namespaces.
package e2e
