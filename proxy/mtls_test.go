package proxy

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zapcore"

	"meshgate/internal/testca"
)

// TestMeshEcho: an app's connection crosses two sidecars as mTLS, the
// plaintext never on the wire between them, and both sidecars name the
// other's identity.
func TestMeshEcho(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	be := startBackend(t, "127.0.0.1:0", echo)
	p := startPair(t, be.addr(), cm, sm, pairOptions{withTap: true})

	c := dial(t, p.client.out())
	const secret = "attack at dawn, the password is swordfish"
	if got := roundTrip(t, c, secret); got != secret {
		t.Fatalf("echo = %q", got)
	}
	src := c.LocalAddr().String()
	c.CloseWrite()
	if err := expectClosed(t, c, 5*time.Second); err != nil {
		t.Fatalf("after half-close: %v, want EOF", err)
	}

	wire := p.tap.recorded()
	if bytes.Contains(wire, []byte("swordfish")) {
		t.Error("the plaintext crossed the wire between the sidecars")
	}
	if len(wire) < 3 || wire[0] != 0x16 || wire[1] != 3 {
		t.Errorf("wire starts %x, want a TLS handshake record", wire[:min(3, len(wire))])
	}

	out := p.client.closedLogs(t, 1)[0]
	in := p.server.closedLogs(t, 1)[0]
	n := fmt.Sprint(len(secret))
	checkFields(t, "client sidecar", out.ContextMap(), map[string]string{
		"direction": "outbound", "src": src, "mtls": "true", "peer_identity": serverID, "tls_resumed": "false",
		"bytes_sent": n, "bytes_received": n, "error": "<missing>", "reason": "<missing>",
	})
	checkFields(t, "server sidecar", in.ContextMap(), map[string]string{
		"direction": "inbound", "dst": be.addr(), "mtls": "true", "peer_identity": clientID, "tls_resumed": "false",
		"bytes_sent": n, "bytes_received": n, "error": "<missing>",
	})
	if out.Level != zapcore.InfoLevel || in.Level != zapcore.InfoLevel {
		t.Errorf("levels %v, %v, want info", out.Level, in.Level)
	}

	// ALPN: each side's verification saw meshgate/tcp negotiated.
	for name, m := range map[string]*testMesh{"client": cm, "server": sm} {
		peers := m.peers()
		if len(peers) != 1 || peers[0].alpn != "meshgate/tcp" {
			t.Errorf("%s verified %+v, want one peer with ALPN meshgate/tcp", name, peers)
		}
	}
	for _, tc := range []struct {
		r    *running
		dir  Direction
		peer string
	}{{p.client, Outbound, serverID}, {p.server, Inbound, clientID}} {
		want := map[string]string{"direction": tc.dir.String(), "result": "ok", "reason": "", "resumed": "false", "peer_identity": tc.peer}
		if got := tc.r.counter(t, "meshgate_tls_handshakes_total", want); got != 1 {
			t.Errorf("meshgate_tls_handshakes_total%v = %v, want 1", want, got)
		}
		if got := tc.r.metric(t, "meshgate_tcp_sent_bytes_total", tc.dir); got != float64(len(secret)) {
			t.Errorf("%s sent bytes = %v, want the %d plaintext bytes", tc.dir, got, len(secret))
		}
	}
	if srcs := be.sources(); len(srcs) != 1 || srcs[0].Addr() != netip.MustParseAddr("127.0.0.6") {
		t.Errorf("app saw connections from %v, want 127.0.0.6", srcs)
	}
}

// TestMeshHalfClose: the client's half-close crosses the TLS hop as a
// close_notify and reaches the app as EOF; the reply flows back after it.
func TestMeshHalfClose(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	be := startBackend(t, "127.0.0.1:0", func(c *net.TCPConn) {
		h := sha256.New()
		n, _ := io.Copy(h, c) // to EOF: only the half-close ends this
		fmt.Fprintf(c, "%d %x", n, h.Sum(nil))
		c.Write(bytes.Repeat([]byte("z"), 100000))
	})
	p := startPair(t, be.addr(), cm, sm, pairOptions{})

	c := dial(t, p.client.out())
	req := bytes.Repeat([]byte("request "), 10000)
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	reply, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	want := fmt.Sprintf("%d %x", len(req), sha256.Sum256(req)) + strings.Repeat("z", 100000)
	if string(reply) != want {
		t.Fatalf("reply is %d bytes starting %.80q, want %d bytes starting %.80q", len(reply), reply, len(want), want)
	}
	for _, r := range []*running{p.client, p.server} {
		e := r.closedLogs(t, 1)[0]
		checkFields(t, field(e, "direction"), e.ContextMap(), map[string]string{
			"bytes_sent": fmt.Sprint(len(req)), "bytes_received": fmt.Sprint(len(want)), "error": "<missing>"})
	}
}

// TestMeshLargeTransfer sends megabytes each way at once through the
// pair and compares hashes.
func TestMeshLargeTransfer(t *testing.T) {
	size := 16 << 20
	if testing.Short() {
		size = 4 << 20
	}
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	be := startBackend(t, "127.0.0.1:0", echo)
	p := startPair(t, be.addr(), cm, sm, pairOptions{})

	c := dial(t, p.client.out())
	c.SetDeadline(time.Now().Add(60 * time.Second))
	data := make([]byte, size)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if n != int64(size) || !bytes.Equal(h.Sum(nil), sha256New(data)) {
		t.Fatalf("got %d bytes back, want %d intact", n, size)
	}
	for _, r := range []*running{p.client, p.server} {
		e := r.closedLogs(t, 1)[0]
		checkFields(t, field(e, "direction"), e.ContextMap(), map[string]string{
			"bytes_sent": fmt.Sprint(size), "bytes_received": fmt.Sprint(size), "error": "<missing>", "mtls": "true"})
	}
}

// TestMeshStrict: in strict mode the server sidecar takes mesh mTLS only.
func TestMeshStrict(t *testing.T) {
	mca := newMeshCA(t)
	_, sm := mca.meshes()
	be := startBackend(t, "127.0.0.1:0", echo)
	srv := startProxy(t, testConfig(), WithMeshTLS(sm), to(be.addr()))
	port := strconv.Itoa(int(netip.MustParseAddrPort(be.addr()).Port()))

	for _, tc := range []struct {
		name    string
		send    func(c net.Conn) error // the error seen by the client, if it saw one
		wantErr string
	}{
		{"plaintext", func(c net.Conn) error { io.WriteString(c, "GET / HTTP/1.1\r\n\r\n"); return nil },
			"client sent no TLS ClientHello: sniff: no match: first byte 0x47 is not a TLS handshake record"},
		{"closed at once", func(c net.Conn) error { c.(*net.TCPConn).CloseWrite(); return nil },
			"client closed without sending a ClientHello"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv.logs.TakeAll()
			c := dial(t, srv.in())
			err := tc.send(c)
			if err == nil {
				err = expectClosed(t, c, 5*time.Second)
			}
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("client saw %v, want a reset", err)
			}
			e := srv.closedLogs(t, 1)[0]
			if e.Level != zapcore.WarnLevel {
				t.Errorf("level %v, want warn", e.Level)
			}
			checkFields(t, "server sidecar", e.ContextMap(), map[string]string{
				"reason": "plaintext refused: mtls strict", "error": tc.wantErr, "mtls": "false", "peer_identity": ""})
		})
	}
	if got := srv.counter(t, "meshgate_mtls_plaintext_refused_total", map[string]string{"direction": "inbound", "port": port}); got != 2 {
		t.Errorf("plaintext refused{port=%s} = %v, want 2", port, got)
	}
	if srcs := be.sources(); len(srcs) != 0 {
		t.Errorf("the app saw %d connections, want none: strict must not dial the app for a refused client", len(srcs))
	}

	// TLS that is not from a sidecar is terminated and refused: to a TLS
	// scanner the port is a TLS 1.3 server requiring a client certificate.
	cert := mca.client.TLSCertificate()
	for _, tc := range []struct {
		name      string
		cfg       *tls.Config
		clientErr string // "" when the client's handshake succeeds
		errPart   string
	}{
		{"another ALPN", &tls.Config{NextProtos: []string{"h2"}, InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}},
			"no application protocol", `client offers no mesh protocol (ALPN ["h2"])`},
		{"TLS 1.2", &tls.Config{MaxVersion: tls.VersionTLS12, InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}},
			"protocol version", "client offers no mesh protocol"},
		{"TLS 1.3 with a client certificate, no ALPN", &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}},
			"", `client offers no mesh protocol (ALPN []), it is not a meshgate sidecar: mesh TLS from client: peer negotiated ALPN ""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv.logs.TakeAll()
			c := dial(t, srv.in())
			tlc := tls.Client(c, tc.cfg)
			err := tlc.Handshake()
			if tc.clientErr == "" {
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				if v := tlc.ConnectionState().Version; v != tls.VersionTLS13 {
					t.Errorf("version %x, want TLS 1.3", v)
				}
				_, err = tlc.Read(make([]byte, 1))
				if !errors.Is(err, syscall.ECONNRESET) {
					t.Errorf("read after the handshake: %v, want a reset", err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.clientErr) {
				t.Errorf("handshake error %v, want %q", err, tc.clientErr)
			}
			e := srv.closedLogs(t, 1)[0]
			checkFields(t, "server sidecar", e.ContextMap(), map[string]string{"reason": "alpn_mismatch", "mtls": "true"})
			if got := field(e, "error"); !strings.Contains(got, tc.errPart) {
				t.Errorf("error = %q, want it to say %q", got, tc.errPart)
			}
		})
	}
	if got := srv.counter(t, "meshgate_tls_handshakes_total", map[string]string{"direction": "inbound", "result": "failed", "reason": "alpn_mismatch"}); got != 3 {
		t.Errorf("failed handshakes = %v, want 3", got)
	}

	t.Run("silent client", func(t *testing.T) {
		cfg := testConfig()
		cfg.Timeouts.Handshake = Duration(200 * time.Millisecond)
		srv := startProxy(t, cfg, WithMeshTLS(sm), to(be.addr()))
		c := dial(t, srv.in())
		expectClosed(t, c, 5*time.Second)
		checkFields(t, "server sidecar", srv.closedLogs(t, 1)[0].ContextMap(), map[string]string{
			"reason": "plaintext refused: mtls strict", "error": "client sent nothing within timeouts.handshake (200ms)"})
	})
}

// TestMeshPermissive: in permissive mode the server sidecar takes mesh
// mTLS and plaintext both; a per-port override turns it on for one port.
func TestMeshPermissive(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	be := startBackend(t, "127.0.0.1:0", echo)
	bePort := netip.MustParseAddrPort(be.addr()).Port()
	for name, mod := range map[string]func(*Config){
		"mode":      func(c *Config) { c.MTLS.Mode = MTLSPermissive },
		"port mode": func(c *Config) { c.MTLS.PortModes = map[uint16]MTLSMode{bePort: MTLSPermissive} },
	} {
		t.Run(name, func(t *testing.T) {
			p := startPair(t, be.addr(), cm, sm, pairOptions{serverCfg: mod})

			plain := dial(t, p.server.in())
			if got := roundTrip(t, plain, "plain hello"); got != "plain hello" {
				t.Fatalf("plaintext echo = %q", got)
			}
			plain.Close()
			e := p.server.closedLogs(t, 1)[0]
			checkFields(t, "plaintext", e.ContextMap(), map[string]string{"mtls": "false", "peer_identity": "", "bytes_sent": "11", "error": "<missing>"})

			p.server.logs.TakeAll()
			mesh := dial(t, p.client.out())
			if got := roundTrip(t, mesh, "mesh hello"); got != "mesh hello" {
				t.Fatalf("mesh echo = %q", got)
			}
			mesh.Close()
			e = p.server.closedLogs(t, 1)[0]
			checkFields(t, "mesh", e.ContextMap(), map[string]string{"mtls": "true", "peer_identity": clientID, "bytes_sent": "10"})
		})
	}
}

// greeter is a server-first backend: it greets at once, then echoes.
func greeter(c *net.TCPConn) {
	io.WriteString(c, "220 ready\r\n")
	echo(c)
}

// TestMeshServerFirst: with a server-first app, a plaintext client in
// permissive mode is greeted without waiting for any timeout, and a mesh
// client gets the greeting through mTLS (in both modes), though the app
// spoke before the client's ClientHello arrived.
func TestMeshServerFirst(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	be := startBackend(t, "127.0.0.1:0", greeter)
	const timeout = 5 * time.Second

	for _, mode := range []MTLSMode{MTLSPermissive, MTLSStrict} {
		t.Run(string(mode), func(t *testing.T) {
			p := startPair(t, be.addr(), cm, sm, pairOptions{serverCfg: func(c *Config) {
				c.MTLS.Mode = mode
				c.Timeouts.Handshake = Duration(timeout)
			}})
			if mode == MTLSPermissive {
				start := time.Now()
				c := dial(t, p.server.in())
				greeting := make([]byte, len("220 ready\r\n"))
				c.SetReadDeadline(time.Now().Add(2 * timeout))
				if _, err := io.ReadFull(c, greeting); err != nil {
					t.Fatalf("plaintext client: no greeting: %v", err)
				}
				// Greeted with no detection stall: well before the 5s
				// timeout (the greeting hold is 10ms).
				if d := time.Since(start); d > timeout/5 {
					t.Errorf("plaintext client greeted after %v, want well under the %v timeout", d, timeout)
				}
				if got := roundTrip(t, c, "HELO"); got != "HELO" {
					t.Errorf("echo after greeting = %q", got)
				}
				c.Close()
				p.server.closedLogs(t, 1)
				p.server.logs.TakeAll()
			}
			for i := range 5 { // the race is timing: try it a few times
				c := dial(t, p.client.out())
				greeting := make([]byte, len("220 ready\r\n"))
				c.SetReadDeadline(time.Now().Add(2 * timeout))
				if _, err := io.ReadFull(c, greeting); err != nil || string(greeting) != "220 ready\r\n" {
					t.Fatalf("mesh client %d: greeting %q, %v", i, greeting, err)
				}
				if got := roundTrip(t, c, "EHLO"); got != "EHLO" {
					t.Errorf("mesh client %d: echo = %q", i, got)
				}
				c.Close()
			}
			for _, e := range p.server.closedLogs(t, 5) {
				checkFields(t, "server sidecar", e.ContextMap(), map[string]string{"mtls": "true", "peer_identity": clientID})
			}
		})
	}
}

// TestMeshRefusals: a handshake refused for each reason is logged with
// the reason and counted, on the side that refused it; the app's
// connection is reset, never served.
func TestMeshRefusals(t *testing.T) {
	mca := newMeshCA(t)
	other := testca.New(t, "other.org")
	impostor := testca.New(t, "cluster.local") // same name, another root
	be := startBackend(t, "127.0.0.1:0", echo)
	past := time.Now().Add(-48 * time.Hour)

	tests := []struct {
		name      string
		client    *testMesh
		server    *testMesh
		clientCfg func(*Config)
		refuser   string // "server" or "client": whose log and metric
		reason    string
		errPart   string
	}{
		{name: "client cert from another trust domain",
			client:  newTestMesh(other.Issue(t, "spiffe://other.org/ns/shop/sa/client", testca.LeafOptions{}), "cluster.local", mca.ca),
			refuser: "server", reason: "wrong_trust_domain", errPart: "spiffe://other.org/ns/shop/sa/client is not of cluster.local"},
		{name: "expired client cert",
			client: newTestMesh(mca.ca.Issue(t, clientID, testca.LeafOptions{NotBefore: past, NotAfter: past.Add(time.Hour)}),
				"cluster.local", mca.ca),
			refuser: "server", reason: "expired", errPart: "certificate expired"},
		{name: "client cert from an unknown CA",
			client:  newTestMesh(impostor.Issue(t, clientID, testca.LeafOptions{}), "cluster.local", mca.ca),
			refuser: "server", reason: "unknown_ca", errPart: "unknown authority"},
		{name: "no client cert",
			client:  newTestMesh(nil, "cluster.local", mca.ca),
			refuser: "server", reason: "no_certificate", errPart: "didn't provide a certificate"},
		{name: "server of the wrong identity",
			clientCfg: func(c *Config) {
				c.MTLS.Destinations = []MTLSDestination{{CIDR: netip.MustParsePrefix("127.0.0.1/32"),
					Identity: mustID("spiffe://cluster.local/ns/shop/sa/payments")}}
			},
			refuser: "client", reason: "wrong_identity",
			errPart: "got spiffe://cluster.local/ns/shop/sa/server, want spiffe://cluster.local/ns/shop/sa/payments"},
		{name: "expired server cert",
			server: newTestMesh(mca.ca.Issue(t, serverID, testca.LeafOptions{NotBefore: past, NotAfter: past.Add(time.Hour)}),
				"cluster.local", mca.ca),
			refuser: "client", reason: "expired", errPart: "certificate expired"},
		{name: "server cert from another trust domain",
			server:  newTestMesh(other.Issue(t, "spiffe://other.org/ns/shop/sa/server", testca.LeafOptions{}), "cluster.local", mca.ca),
			refuser: "client", reason: "wrong_trust_domain", errPart: "is not of cluster.local"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cm, sm := mca.meshes()
			if tc.client != nil {
				cm = tc.client
			}
			if tc.server != nil {
				sm = tc.server
			}
			p := startPair(t, be.addr(), cm, sm, pairOptions{clientCfg: tc.clientCfg})
			if c, err := net.DialTimeout("tcp", p.client.out(), 5*time.Second); err == nil {
				// (The reset may come before the connect returns.)
				c.SetDeadline(time.Now().Add(5 * time.Second))
				// A reset that arrives before the write is reported to the
				// write, once; the read after it sees the socket closed.
				_, werr := io.WriteString(c, "hello")
				if b, err := io.ReadAll(c); (werr == nil && err == nil) || len(b) > 0 {
					t.Errorf("app wrote (%v) and read %q, %v; want a reset and nothing served", werr, b, err)
				}
				c.Close()
			} else if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatal(err)
			}

			r, dir := p.server, Inbound
			if tc.refuser == "client" {
				r, dir = p.client, Outbound
			}
			e := r.closedLogs(t, 1)[0]
			if e.Level != zapcore.WarnLevel {
				t.Errorf("level %v, want warn", e.Level)
			}
			checkFields(t, tc.refuser+" sidecar", e.ContextMap(), map[string]string{
				"reason": tc.reason, "mtls": "true", "peer_identity": "", "bytes_sent": "0"})
			if got := field(e, "error"); !strings.Contains(got, tc.errPart) {
				t.Errorf("error = %q, want it to say %q", got, tc.errPart)
			}
			want := map[string]string{"direction": dir.String(), "result": "failed", "reason": tc.reason, "peer_identity": ""}
			if got := r.counter(t, "meshgate_tls_handshakes_total", want); got != 1 {
				t.Errorf("meshgate_tls_handshakes_total%v = %v, want 1", want, got)
			}
			if tc.refuser == "server" {
				// In TLS 1.3 the client's handshake is over before the
				// server has checked its certificate: the client sidecar
				// learns of the refusal from the alert that follows.
				e := p.client.closedLogs(t, 1)[0]
				if got := field(e, "reason"); !strings.HasPrefix(got, "refused by peer: ") {
					t.Errorf("client sidecar reason = %q, want refused by peer", got)
				}
			}
		})
	}
	if n := len(be.sources()); n != 0 {
		t.Errorf("the app saw %d connections, want none", n)
	}
}

// TestMeshResumption: the second connection to the same destination
// resumes the first one's TLS session.
func TestMeshResumption(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	be := startBackend(t, "127.0.0.1:0", echo)
	p := startPair(t, be.addr(), cm, sm, pairOptions{})

	for i := range 3 {
		c := dial(t, p.client.out())
		if got := roundTrip(t, c, "hi"); got != "hi" {
			t.Fatalf("connection %d: echo %q", i, got)
		}
		c.Close()
		p.client.closedLogs(t, i+1)
	}
	for _, tc := range []struct {
		r    *running
		dir  Direction
		peer string
	}{{p.client, Outbound, serverID}, {p.server, Inbound, clientID}} {
		for resumed, want := range map[string]float64{"false": 1, "true": 2} {
			labels := map[string]string{"direction": tc.dir.String(), "result": "ok", "resumed": resumed, "peer_identity": tc.peer}
			if got := tc.r.counter(t, "meshgate_tls_handshakes_total", labels); got != want {
				t.Errorf("meshgate_tls_handshakes_total%v = %v, want %v", labels, got, want)
			}
		}
	}
	logs := p.client.closedLogs(t, 3)
	for i, want := range []string{"false", "true", "true"} {
		checkFields(t, fmt.Sprintf("connection %d", i), logs[i].ContextMap(), map[string]string{"tls_resumed": want, "peer_identity": serverID})
	}
}

// TestMeshRotation: the server's certificate is replaced while a
// connection streams: that connection goes on undisturbed, and the next
// one is served with the new certificate.
func TestMeshRotation(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	be := startBackend(t, "127.0.0.1:0", echo)
	p := startPair(t, be.addr(), cm, sm, pairOptions{})

	long := dial(t, p.client.out())
	roundTrip(t, long, "before")
	oldSerial := mca.server.Cert.SerialNumber

	next := mca.ca.Issue(t, serverID, testca.LeafOptions{})
	sm.rotate(next)

	if got := roundTrip(t, long, "during"); got != "during" {
		t.Fatalf("established connection after rotation: %q", got)
	}
	c := dial(t, p.client.out())
	if got := roundTrip(t, c, "new"); got != "new" {
		t.Fatalf("new connection: %q", got)
	}
	c.Close()
	if got := roundTrip(t, long, "after"); got != "after" {
		t.Fatalf("established connection after a new one: %q", got)
	}
	long.CloseWrite()
	if err := expectClosed(t, long, 5*time.Second); err != nil {
		t.Fatalf("established connection ended with %v, want EOF", err)
	}

	var serials []string
	for _, peer := range cm.peers() {
		serials = append(serials, peer.serial.String())
	}
	if want := []string{oldSerial.String(), next.Cert.SerialNumber.String()}; !cmp.Equal(serials, want) {
		t.Errorf("client verified server serials %v, want %v (old, then new)", serials, want)
	}
	for _, e := range p.client.closedLogs(t, 2) {
		checkFields(t, "client sidecar", e.ContextMap(), map[string]string{"error": "<missing>", "mtls": "true"})
	}
}

// TestMeshOutside: outbound to a destination outside mtls.meshCIDRs is
// plaintext, or refused when plaintextOutsideMesh is false.
func TestMeshOutside(t *testing.T) {
	mca := newMeshCA(t)
	cm, _ := mca.meshes()
	be := startBackend(t, "127.0.0.1:0", echo)
	port := strconv.Itoa(int(netip.MustParseAddrPort(be.addr()).Port()))

	t.Run("plaintext allowed", func(t *testing.T) {
		cfg := testConfig()
		cfg.MTLS.MeshCIDRs = prefixes("10.0.0.0/8")
		r := startProxy(t, cfg, WithMeshTLS(cm), to(be.addr()))
		c := dial(t, r.out())
		if got := roundTrip(t, c, "out"); got != "out" {
			t.Fatalf("echo %q", got)
		}
		c.Close()
		checkFields(t, "outside", r.closedLogs(t, 1)[0].ContextMap(), map[string]string{"mtls": "false", "error": "<missing>"})
	})
	t.Run("plaintext refused", func(t *testing.T) {
		cfg := testConfig()
		cfg.MTLS.MeshCIDRs = prefixes("10.0.0.0/8")
		cfg.MTLS.PlaintextOutsideMesh = false
		r := startProxy(t, cfg, WithMeshTLS(cm), to(be.addr()))
		expectRefused(t, r.out())
		e := r.closedLogs(t, 1)[0]
		checkFields(t, "refused", e.ContextMap(), map[string]string{
			"reason": "plaintext refused: outside the mesh",
			"error": "destination is outside mtls.meshCIDRs and mtls.plaintextOutsideMesh is false: " +
				"add it to mtls.meshCIDRs if it runs a sidecar, or allow plaintext outside the mesh"})
		if got := r.counter(t, "meshgate_mtls_plaintext_refused_total", map[string]string{"direction": "outbound", "port": port}); got != 1 {
			t.Errorf("plaintext refused = %v, want 1", got)
		}
	})
	t.Run("mode disable sends the mesh plaintext", func(t *testing.T) {
		cfg := testConfig()
		cfg.MTLS.Mode = MTLSDisable
		cfg.MTLS.MeshCIDRs = prefixes("127.0.0.0/8")
		r := startProxy(t, cfg, WithMeshTLS(cm), to(be.addr()))
		c := dial(t, r.out())
		if got := roundTrip(t, c, "plain"); got != "plain" {
			t.Fatalf("echo %q", got)
		}
		c.Close()
		checkFields(t, "disable", r.closedLogs(t, 1)[0].ContextMap(), map[string]string{"mtls": "false"})
	})
}

// TestMeshNotASidecar: a mesh destination that is no meshgate sidecar
// fails the handshake with a reason, whether it speaks no TLS or TLS
// without the mesh ALPN.
func TestMeshNotASidecar(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()

	// A TLS server with a valid mesh certificate but no ALPN.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", sm.ServerConfig())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	plain := startBackend(t, "127.0.0.1:0", func(c *net.TCPConn) { io.Copy(io.Discard, c) })

	for _, tc := range []struct {
		name, dst, reason, errPart string
	}{
		{"TLS without the mesh ALPN", ln.Addr().String(), "alpn_mismatch",
			`peer negotiated ALPN "", want "meshgate/tcp": it is not a meshgate sidecar serving meshgate/tcp`},
		{"no TLS at all", plain.addr(), "timeout", "no handshake within timeouts.handshake (300ms)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.MTLS.MeshCIDRs = prefixes("127.0.0.0/8")
			cfg.Timeouts.Handshake = Duration(300 * time.Millisecond)
			r := startProxy(t, cfg, WithMeshTLS(cm), to(tc.dst))
			expectRefused(t, r.out())
			e := r.closedLogs(t, 1)[0]
			checkFields(t, "client sidecar", e.ContextMap(), map[string]string{"reason": tc.reason, "mtls": "true"})
			if got := field(e, "error"); !strings.Contains(got, tc.errPart) {
				t.Errorf("error = %q, want it to say %q", got, tc.errPart)
			}
		})
	}
}

// TestMeshUnsupportedProtocol: a ClientHello offering only mesh protocols
// this sidecar does not serve is refused before any handshake.
func TestMeshUnsupportedProtocol(t *testing.T) {
	mca := newMeshCA(t)
	_, sm := mca.meshes()
	be := startBackend(t, "127.0.0.1:0", echo)
	srv := startProxy(t, testConfig(), WithMeshTLS(sm), to(be.addr()))
	c := dial(t, srv.in())
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"meshgate/h9"}})
	if err := tc.Handshake(); err == nil {
		t.Fatal("handshake succeeded")
	}
	e := srv.closedLogs(t, 1)[0]
	checkFields(t, "server sidecar", e.ContextMap(), map[string]string{
		"reason": "mesh protocol not served", "mtls": "true",
		"error": `client offers mesh protocols ["meshgate/h9"], none of which this sidecar serves (["meshgate/tcp" "meshgate/h2" "meshgate/http1"])`})
	if got := srv.counter(t, "meshgate_tls_handshakes_total", map[string]string{"result": "failed", "reason": "unsupported_protocol"}); got != 1 {
		t.Errorf("failed handshakes = %v, want 1", got)
	}
}

// TestMeshIdleTimeout: a silent mesh connection is closed by the idle
// timeout of the client sidecar, and the server sidecar sees it reset.
func TestMeshIdleTimeout(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	be := startBackend(t, "127.0.0.1:0", echo)
	p := startPair(t, be.addr(), cm, sm, pairOptions{clientCfg: func(c *Config) { c.Timeouts.Idle = Duration(300 * time.Millisecond) }})
	c := dial(t, p.client.out())
	roundTrip(t, c, "hi")
	start := time.Now()
	expectClosed(t, c, 5*time.Second)
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("closed after %v, before the idle timeout", d)
	}
	if got := field(p.client.closedLogs(t, 1)[0], "error"); !strings.Contains(got, "idle timeout: no bytes either way for 300ms") {
		t.Errorf("client sidecar error = %q, want an idle timeout", got)
	}
	if got := field(p.server.closedLogs(t, 1)[0], "error"); !strings.Contains(got, "read from client") || !strings.Contains(got, "reset") {
		t.Errorf("server sidecar error = %q, want the client sidecar's reset", got)
	}
}

// TestNewMTLSMode: the mode in effect, and modes without certificates.
func TestNewMTLSMode(t *testing.T) {
	mca := newMeshCA(t)
	cm, _ := mca.meshes()
	for _, tc := range []struct {
		name    string
		modify  func(*Config)
		mesh    MeshTLS
		want    MTLSMode
		wantErr string
	}{
		{name: "unset without certificates", want: MTLSDisable},
		{name: "unset with certificates", mesh: cm, want: MTLSStrict},
		{name: "explicit disable with certificates", mesh: cm, modify: func(c *Config) { c.MTLS.Mode = MTLSDisable }, want: MTLSDisable},
		{name: "permissive with certificates", mesh: cm, modify: func(c *Config) { c.MTLS.Mode = MTLSPermissive }, want: MTLSPermissive},
		{name: "port disable without certificates", modify: func(c *Config) { c.MTLS.PortModes = map[uint16]MTLSMode{80: MTLSDisable} }, want: MTLSDisable},
		{name: "strict without certificates", modify: func(c *Config) {
			c.MTLS.Mode = MTLSStrict
			c.MTLS.PortModes = map[uint16]MTLSMode{8080: MTLSPermissive, 80: MTLSStrict, 9090: MTLSDisable}
		}, wantErr: "proxy: invalid config: " + strings.Join([]string{
			"mtls.mode: strict needs the mesh certificates; give --cert-dir, or set mtls.mode to disable",
			"mtls.portModes.80: strict needs the mesh certificates; give --cert-dir, or remove it",
			"mtls.portModes.8080: permissive needs the mesh certificates; give --cert-dir, or remove it",
		}, "\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			if tc.modify != nil {
				tc.modify(&cfg)
			}
			var opts []Option
			if tc.mesh != nil {
				opts = append(opts, WithMeshTLS(tc.mesh))
			}
			p, err := New(cfg, nil, opts...)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("New = %v, want\n%s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.cfg.MTLS.Mode != tc.want {
				t.Errorf("mode = %s, want %s", p.cfg.MTLS.Mode, tc.want)
			}
		})
	}
}

// TestMeshDestinations: the most specific destination CIDR names the
// identity expected; an unlisted mesh destination expects none.
func TestMeshDestinations(t *testing.T) {
	cfg := DefaultConfig().MTLS
	cfg.MeshCIDRs = prefixes("10.0.0.0/8")
	cfg.Destinations = []MTLSDestination{
		{CIDR: netip.MustParsePrefix("10.1.0.0/16"), Identity: mustID("spiffe://td/ns/a/sa/wide")},
		{CIDR: netip.MustParsePrefix("10.1.2.0/24"), Identity: mustID("spiffe://td/ns/a/sa/narrow")},
		{CIDR: netip.MustParsePrefix("192.168.1.1/32"), Identity: mustID("spiffe://td/ns/a/sa/outside")},
	}
	s, err := newMeshState(cfg, newTestMesh(nil, "td"))
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]string{
		"10.1.2.3": "spiffe://td/ns/a/sa/narrow", "10.1.9.9": "spiffe://td/ns/a/sa/wide",
		"10.9.9.9": "", "::ffff:10.1.2.3": "spiffe://td/ns/a/sa/narrow",
	} {
		got := ""
		if id := s.expected(netip.MustParseAddr(addr)); id != nil {
			got = id.String()
		}
		if got != want {
			t.Errorf("expected(%s) = %q, want %q", addr, got, want)
		}
	}
	for addr, want := range map[string]bool{"::ffff:10.0.0.1": true, "11.0.0.1": false, "192.168.1.1": true} {
		if got := s.inMesh(netip.MustParseAddr(addr)); got != want {
			t.Errorf("inMesh(%s) = %v, want %v", addr, got, want)
		}
	}
}

// TestMeshProbe: a connection made to the inbound port itself (a TLS
// scanner's) is refused, having nowhere to go, but only after the mesh
// handshake: the port shows TLS 1.3 and nothing older.
func TestMeshProbe(t *testing.T) {
	mca := newMeshCA(t)
	_, sm := mca.meshes()
	srv := startProxy(t, testConfig(), WithMeshTLS(sm)) // the real original destination lookup
	cert := mca.client.TLSCertificate()

	c := dial(t, srv.in())
	tlc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}})
	if err := tlc.Handshake(); err != nil {
		t.Fatalf("TLS 1.3 handshake with the inbound port: %v", err)
	}
	if v := tlc.ConnectionState().Version; v != tls.VersionTLS13 {
		t.Errorf("version %x, want TLS 1.3", v)
	}
	tlc.Read(make([]byte, 1))
	e := srv.closedLogs(t, 1)[0]
	got := field(e, "error")
	if !strings.Contains(got, "not redirected") && !strings.Contains(got, "loop guard") {
		t.Errorf("error = %q, want the refusal of a connection with nowhere to go", got)
	}
	checkFields(t, "probe", e.ContextMap(), map[string]string{"mtls": "true", "reason": "alpn_mismatch"})

	c = dial(t, srv.in())
	err := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}).Handshake()
	if err == nil || !strings.Contains(err.Error(), "protocol version") {
		t.Errorf("TLS 1.2 handshake: %v, want a protocol version alert", err)
	}

	// Without mTLS the port answers nothing: a reset.
	plain := startProxy(t, testConfig())
	if err := expectRefused(t, plain.in()); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("without mTLS: %v, want a reset", err)
	}
}
