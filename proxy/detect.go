package proxy

import (
	"net/netip"
	"sync"
	"time"

	"meshgate/proxy/sniff"
)

// How a protocol verdict was reached: the "by" label of
// meshgate_protocol_detections_total and the log line's detected_by.
const (
	byClient      = "client"        // the client's first bytes
	byServerFirst = "server_first"  // the upstream spoke first, the client silent
	byDeclared    = "declared"      // protocols.ports says opaque
	byRemembered  = "remembered"    // the destination spoke first before
	byIncomplete  = "incomplete"    // the client's bytes settled nothing (it went quiet, or the server answered them)
	byTimeout     = "timeout"       // nobody spoke within protocols.detectTimeout
	byClosed      = "client_closed" // the client closed before settling anything
)

// detectQuiet is how long the client may pause after first bytes that
// settle nothing before the connection is taken for opaque: real clients
// send a request line, a preface or a ClientHello in one write.
const detectQuiet = 50 * time.Millisecond

// detectSettled says whether the client's bytes decide the protocol.
func detectSettled(b []byte) bool {
	_, err := sniff.Detect(b)
	return err == nil
}

// detectRace is the wait of protocol detection on pc until deadline: for
// bytes that settle the protocol (sniff.Detect), given up when the client
// goes quiet after bytes that settle nothing or when the upstream (once
// set to be dialed) answers them.
func detectRace(pc *peekConn, deadline time.Time) firstBytesRace {
	return firstBytesRace{client: pc, settled: detectSettled, deadline: deadline, quiet: detectQuiet, upstreamEnds: true}
}

// destMemory remembers destinations for a while: those whose server
// spoke first (their next connections skip detection), and those whose
// clients spoke HTTP (theirs skip the dial made while detecting). It is
// bounded: past serverFirstMax entries, expired ones go, then the oldest.
type destMemory struct {
	ttl time.Duration
	mu  sync.Mutex
	m   map[netip.AddrPort]time.Time // destination → when it is forgotten
}

// serverFirstMax bounds the destinations remembered.
const serverFirstMax = 4096

func newDestMemory(ttl time.Duration) *destMemory {
	return &destMemory{ttl: ttl, m: make(map[netip.AddrPort]time.Time)}
}

// has reports whether dst is remembered as server-first.
func (s *destMemory) has(dst netip.AddrPort, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	until, ok := s.m[dst]
	if ok && !now.Before(until) {
		delete(s.m, dst)
		return false
	}
	return ok
}

// remember records dst as server-first from now.
func (s *destMemory) remember(dst netip.AddrPort, now time.Time) {
	if s.ttl <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[dst]; !ok && len(s.m) >= serverFirstMax {
		var oldest netip.AddrPort
		var oldestUntil time.Time
		for k, until := range s.m {
			if !now.Before(until) {
				delete(s.m, k)
				continue
			}
			if oldestUntil.IsZero() || until.Before(oldestUntil) {
				oldest, oldestUntil = k, until
			}
		}
		if len(s.m) >= serverFirstMax {
			delete(s.m, oldest)
		}
	}
	s.m[dst] = now.Add(s.ttl)
}

// detection is a protocol verdict, for metrics and the log line.
type detection struct {
	proto sniff.Detection
	by    string
	// maybe is, when the client's bytes settled nothing (byIncomplete),
	// what they could still become (sniff.Detect): TLS, HTTP1 or HTTP2.
	maybe sniff.Protocol
}

// verdict reads what a race's opening says of the protocol: the server
// spoke first, the client closed or went quiet without settling
// anything, nobody spoke, or the client's bytes say (sniff.Detect).
func verdict(op opening, peeked []byte) detection {
	switch {
	case op.first == speakerServer:
		return detection{by: byServerFirst}
	case len(peeked) == 0 && op.clientEOF:
		return detection{by: byClosed}
	case len(peeked) == 0:
		return detection{by: byTimeout}
	}
	det, err := sniff.Detect(peeked)
	if err == nil {
		return detection{proto: det, by: byClient}
	}
	return detection{by: byIncomplete, maybe: det.Protocol}
}

// knownHTTP says whether dst speaks HTTP, so that its connections need
// not be dialed while detecting: its port is declared http, or its
// clients spoke HTTP within destMemory.
func (p *Proxy) knownHTTP(dst netip.AddrPort, now time.Time) bool {
	return p.cfg.Protocols.Ports[dst.Port()] == PortHTTP || p.httpDests.has(dst, now)
}

// skipDetection says why an outbound connection to dst is not detected
// ("" when it is): its port is declared opaque, or it spoke first before.
func (p *Proxy) skipDetection(dst netip.AddrPort) string {
	if p.cfg.Protocols.Ports[dst.Port()] == PortOpaque {
		return byDeclared
	}
	if p.serverFirst.has(dst, time.Now()) {
		return byRemembered
	}
	return ""
}

// countDetection counts a verdict and how long it took.
func (p *Proxy) countDetection(dir Direction, d detection, took time.Duration) {
	p.metrics.detections.WithLabelValues(dir.String(), d.proto.Protocol.String(), d.by).Inc()
	p.metrics.detectSeconds.WithLabelValues(dir.String()).Observe(took.Seconds())
	if d.proto.Protocol == sniff.TLS {
		p.metrics.appTLS.WithLabelValues(dir.String(), p.metrics.sniSeen.label(d.proto.Hello.ServerName)).Inc()
	}
}
