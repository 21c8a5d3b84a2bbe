// Package intercept holds what the interception rules (package redirect)
// and the proxy that receives what they capture (package proxy) must agree
// on, written once (shared/DESIGN.md §3): the capture ports, the proxy's
// own ports that are never captured, the socket mark and UID that exempt
// the proxy's own traffic, and the interception mode.
//
// It imports nothing of meshgate, so every package may import it.
package intercept
