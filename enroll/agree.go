package enroll

import (
	"errors"
	"fmt"

	"meshgate/proxy"
	"meshgate/redirect"
)

// Agree reports every way the rules and the sidecar's config disagree so
// that the enrolled workload would lose its traffic: a different
// interception mode (TPROXY hands inbound connections to a transparent
// listener only a tproxy-mode sidecar has), capture ports the sidecar does
// not listen on, or a mark exemption as the only one while the sidecar
// marks with another mark (its own connections would be captured again).
// Each problem names the flag and the config field, and the fix.
func Agree(rules redirect.Config, cfg proxy.Config) error {
	var problems []error
	if rules.Mode != cfg.Mode {
		problems = append(problems, fmt.Errorf("--mode %s: the sidecar's config says mode: %s; set mode: %s in --config, or give --mode %s", rules.Mode, cfg.Mode, rules.Mode, cfg.Mode))
	}
	if rules.InboundPort != cfg.Inbound.Port {
		problems = append(problems, fmt.Errorf("inbound.port %d: the rules send inbound connections to %d; remove inbound.port from --config", cfg.Inbound.Port, rules.InboundPort))
	}
	if rules.OutboundPort != cfg.Outbound.Port {
		problems = append(problems, fmt.Errorf("outbound.port %d: the rules send outbound connections to %d; remove outbound.port from --config", cfg.Outbound.Port, rules.OutboundPort))
	}
	markOnly := rules.ProxyUID == nil && len(rules.ProxyGIDs) == 0
	if markOnly && rules.ProxyMark != uint32(cfg.Mark) {
		problems = append(problems, fmt.Errorf("--proxy-mark %#x: the only exemption, but the sidecar's config marks its sockets with mark: %s, so they would be captured again; make them the same", rules.ProxyMark, cfg.Mark))
	}
	return errors.Join(problems...)
}
