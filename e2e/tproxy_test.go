package e2e

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"meshgate/topology"
)

// tproxyOpts enrolls with inbound capture by TPROXY: the rules
// (--mode tproxy) and the sidecar (mode: tproxy) together.
func tproxyOpts(o enrollOpts) enrollOpts {
	o.redirectArgs = append(o.redirectArgs, "--mode", "tproxy")
	o.proxyConfig = "mode: tproxy\n" + o.proxyConfig
	return o
}

// getView GETs u from inside pod and returns what the demo app saw.
func getView(t *testing.T, pod *topology.Pod, u string) appView {
	t.Helper()
	body := curl(t, pod, u)
	var v appView
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("response %q: %v", body, err)
	}
	return v
}

// hostOf is the address of a host:port, unmapped ("" when it is none).
func hostOf(hostport string) string {
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		return ""
	}
	return ap.Addr().Unmap().String()
}

// appPeers returns the peer addresses of the established connections that
// process proc holds on local port port in pod, as ss shows them: whom the
// app sees on a connection that carries no HTTP to report it in.
func appPeers(t *testing.T, pod *topology.Pod, proc *topology.Process, port int) []string {
	t.Helper()
	out, err := pod.Run(ctxFor(t, 10*time.Second), "ss", "-Htnp", "state", "established", fmt.Sprintf("( sport = :%d )", port))
	if err != nil {
		t.Fatal(err)
	}
	var peers []string
	for _, line := range strings.Split(out, "\n") {
		// Recv-Q Send-Q Local:Port Peer:Port users:(("meshgate",pid=N,fd=M))
		f := strings.Fields(line)
		if len(f) >= 5 && strings.Contains(f[4], fmt.Sprintf("pid=%d,", proc.PID())) {
			peers = append(peers, hostOf(f[3]))
		}
	}
	return peers
}

// holdEcho opens a TCP connection from pod to the echo server at addr and
// makes one round trip on it; the caller closes it.
func holdEcho(t *testing.T, pod *topology.Pod, addr string) io.Closer {
	t.Helper()
	c, err := pod.Dial(ctxFor(t, 10*time.Second), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4)
	if _, err := c.Write([]byte("ping")); err != nil {
		c.Close()
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		c.Close()
		t.Fatalf("echo over a held connection to %s: %q, %v", addr, buf, err)
	}
	return c
}

// TestTProxyClientAddress: what tproxy mode is for. Pod b is enrolled with
// --mode tproxy, and its app sees the client pod a's own address as the
// source of what a sends it, where redirect mode shows it the sidecar's
// passthrough source. For IPv4 and IPv6, and three clients: a enrolled in
// tproxy mode too, or in the default redirect mode, with mTLS (strict)
// between the sidecars as usual and the app given a's verified identity;
// and a without a sidecar, plaintext that b (permissive) lets in, with no
// identity. Each sends an HTTP request
// (pooled HTTP/2 between sidecars), multi-megabyte bodies both ways and
// opaque TCP. Nothing loops: the sidecar's connections to its app, from
// a's address, and the app's replies to them are not captured again. And
// b calling its own address (captured by nat, since TPROXY sees only
// traffic from outside) reaches its app as in redirect mode.
func TestTProxyClientAddress(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name  string
		aMode string // a's sidecar: tproxy or redirect; none: b is permissive
	}{{"mtls", "tproxy"}, {"mtls-client-redirect", "redirect"}, {"plaintext", ""}} {
		for _, fam := range families {
			t.Run(tc.name+"/"+fam.name, func(t *testing.T) {
				skipNoIPv6(t, fam)
				pods := newLab(t, "a", "b")
				a, b := pods[0], pods[1]
				app := startApp(t, b)
				ca := meshCA(t)
				var sa *sidecar
				mode, identity := "permissive", ""
				if tc.aMode != "" {
					mode, identity = "strict", "URI="+spiffeFor(a)
					o := meshOpts(issueFor(t, ca, a), mode, a, b)
					if tc.aMode == "tproxy" {
						o = tproxyOpts(o)
					}
					sa = enroll(t, a, o)
				}
				sb := enroll(t, b, tproxyOpts(meshOpts(issueFor(t, ca, b), mode, a, b)))
				src, dst := fam.addr(a).String(), fam.addr(b)

				v := getView(t, a, url(dst, 8080, "/"))
				if got := hostOf(v.Remote); got != src {
					t.Errorf("b's app saw the request come from %s, want a's own address %s", v.Remote, src)
				}
				if v.ClientCert != identity {
					t.Errorf("b's app got client_cert %q, want %q", v.ClientCert, identity)
				}
				bigBodies(t, a, dst)

				// Opaque TCP: the app's end of the connection has a's
				// address as its peer.
				c := holdEcho(t, a, hostPort(dst, 9000))
				peers := appPeers(t, b, app, 9000)
				c.Close()
				if len(peers) != 1 || peers[0] != src {
					t.Errorf("b's echo server is connected to %q, want only a's own address %s", peers, src)
				}
				msg := make([]byte, 3<<20)
				rand.Read(msg)
				echo(t, a, hostPort(dst, 9000), msg)

				if sa != nil {
					meshConnsMatch(t, sa, sb, a, b)
				} else {
					self := getView(t, b, url(dst, 8080, "/"))
					if got := hostOf(self.Remote); got != fam.passthrough {
						t.Errorf("b calling itself: its app saw the request from %s, want the passthrough source %s", self.Remote, fam.passthrough)
					}
					// One per client connection: the GET, two bodies,
					// two echoes, b's own GET.
					if n := sb.conns(t, "inbound"); n != 6 {
						t.Errorf("b's sidecar accepted %v inbound connections, want 6, one per client connection", n)
					}
				}
				if n := sb.conns(t, "outbound"); n != 0 {
					t.Errorf("b's sidecar captured %v outbound connections, want 0: its own traffic to the app came back", n)
				}
				if strings.Contains(sb.proc.Output(), "loop guard") {
					t.Errorf("b's sidecar saw a loop:\n%s", tail(sb.proc.Output(), 20))
				}
			})
		}
	}
}

// meshConnsMatch checks that every connection sa (in pod a) made to pod b
// was verified mTLS and reached sb exactly once: had sb's dial to its app,
// or the app's replies, been captured again, sb would count more inbound
// connections than a made (or refuse them with its loop guard).
func meshConnsMatch(t *testing.T, sa, sb *sidecar, a, b *topology.Pod) {
	t.Helper()
	eventually(t, 5*time.Second, func() error {
		aOut := sa.tlsHandshakes(t, "direction=outbound", "result=ok", "peer_identity="+spiffeFor(b))
		bIn := sb.tlsHandshakes(t, "direction=inbound", "result=ok", "peer_identity="+spiffeFor(a))
		bOpened := sb.conns(t, "inbound")
		if aOut < 3 || aOut != bIn || bIn != bOpened {
			return fmt.Errorf("a's sidecar made %v verified mTLS connections to b, b's sidecar verified %v and accepted %v; want them equal, and at least 3 (the pooled HTTP/2 one, two echoes)", aOut, bIn, bOpened)
		}
		return nil
	})
}
