package discovery

import (
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"meshgate/internal/testmark"
	"meshgate/sockmark"
)

// TestUpstreamSocketsMarked: every socket the DNS proxy opens upstream,
// UDP and TCP, for the app's questions and for its own TXT look-ups,
// carries Options.Mark, read back from the socket as it is dialed. The
// capture rules exempt the sidecar by that mark; a question sent unmarked
// by a sidecar running as root is captured back to the sidecar itself.
func TestUpstreamSocketsMarked(t *testing.T) {
	const mark = 0x539
	testmark.Need(t, mark)
	up := startUpstream(t)
	s, err := New(Options{Addrs: []string{"127.0.0.1:0"}, Upstreams: []string{up.addr}, Timeout: time.Second, Mark: mark})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	marks := map[string][]uint32{} // "udp", "tcp" → the mark of each socket dialed
	markIt := s.dialer.Control
	s.dialer.Control = func(network, address string, c syscall.RawConn) error {
		if markIt != nil {
			if err := markIt(network, address, c); err != nil {
				return err
			}
		}
		m, err := sockmark.Get(c)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		network = strings.TrimRight(network, "46")
		marks[network] = append(marks[network], m)
		return nil
	}
	// svc.example A: the question over UDP, and its TXT record, asked
	// alongside; huge.example TXT: truncated over UDP, then over TCP.
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"svc.example.", dns.TypeA}, {"huge.example.", dns.TypeTXT}} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		if r, result := s.answer(m); result != "upstream" || len(r.Answer) == 0 {
			t.Fatalf("%s %s: %s, %d answers; want it from upstream", q.name, dns.TypeToString[q.qtype], result, len(r.Answer))
		}
	}
	if n := up.count("svc.example.", dns.TypeTXT); n != 1 {
		t.Errorf("svc.example's TXT record asked %d times, want 1", n)
	}
	mu.Lock()
	defer mu.Unlock()
	for network, want := range map[string]int{"udp": 3, "tcp": 1} {
		if len(marks[network]) != want {
			t.Errorf("%d upstream sockets over %s dialed by the server's dialer, want %d", len(marks[network]), network, want)
		}
		for _, m := range marks[network] {
			if m != mark {
				t.Errorf("an upstream socket over %s carries mark %#x, want %#x", network, m, mark)
			}
		}
	}
}
