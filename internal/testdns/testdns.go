package testdns

import (
	"net"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Server is a running test DNS server.
type Server struct {
	mu   sync.Mutex
	asks map[string]int // "NAME TYPE" → questions
}

// Serve answers on pc (UDP) and ln (TCP) until the test ends: answer
// fills m, a reply to q already marked authoritative (an empty one is
// NOERROR with no records).
func Serve(t testing.TB, pc net.PacketConn, ln net.Listener, answer func(q dns.Question, m *dns.Msg)) *Server {
	t.Helper()
	s := &Server{asks: map[string]int{}}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		q := r.Question[0]
		s.mu.Lock()
		s.asks[q.Name+" "+dns.TypeToString[q.Qtype]]++
		s.mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		answer(q, m)
		if w.LocalAddr().Network() == "udp" {
			size := dns.MinMsgSize
			if o := r.IsEdns0(); o != nil {
				size = int(o.UDPSize())
				m.SetEdns0(o.UDPSize(), false)
			}
			m.Truncate(size)
		}
		w.WriteMsg(m)
	})
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		done := make(chan struct{})
		go func() { srv.ActivateAndServe(); close(done) }()
		<-started
		t.Cleanup(func() { srv.Shutdown(); <-done })
	}
	return s
}

// Count is how many times name was asked for records of qtype.
func (s *Server) Count(name string, qtype uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.asks[name+" "+dns.TypeToString[qtype]]
}

// CountName is how many times name was asked, all types together.
func (s *Server) CountName(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, v := range s.asks {
		if len(k) > len(name) && k[:len(name)+1] == name+" " {
			n += v
		}
	}
	return n
}
