package sidecar

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshgate/internal/testnet"
	"meshgate/mtls/ca"
	"meshgate/proxy"
)

// loopback is a proxy config with every listener on loopback, the
// metrics and health ones on the ports given.
func loopback(metricsPort, healthPort uint16) proxy.Config {
	cfg := proxy.DefaultConfig()
	cfg.LogLevel = "error"
	cfg.Outbound.Port, cfg.Inbound.Port = 0, 0
	lo := netip.MustParseAddr("127.0.0.1")
	cfg.Admin.Address = netip.AddrPortFrom(lo, 0)
	cfg.Metrics.Address = netip.AddrPortFrom(lo, metricsPort)
	cfg.Health.Address = netip.AddrPortFrom(lo, healthPort)
	return cfg
}

// start runs the sidecar of o until the test ends, as "meshgate proxy"
// does, and returns once WaitReady says it is ready; its health port
// must be set.
func start(t *testing.T, o Options) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := WaitReady(wctx, (&net.Dialer{}).DialContext, o.Config.Health.Address.Port(), nil); err != nil {
		t.Fatal(err)
	}
}

// TestRunAnswersRegistryNames asks the sidecar's DNS proxy a name of its
// registry.
func TestRunAnswersRegistryNames(t *testing.T) {
	dir := t.TempDir()
	regPath := filepath.Join(dir, "registry.yaml")
	if err := os.WriteFile(regPath, []byte("services:\n- name: web.shop.mesh\n  endpoints: [10.0.0.5]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reg, err := LoadRegistry(regPath)
	if err != nil {
		t.Fatal(err)
	}
	dnsAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), testnet.FreePort(t, "udp")).String()
	start(t, Options{Config: loopback(0, testnet.FreePort(t, "tcp")), DNSListen: []string{dnsAddr}, ResolvConf: filepath.Join(dir, "none"), Registry: reg})

	m := new(dns.Msg)
	m.SetQuestion("web.shop.mesh.", dns.TypeA)
	r, err := dns.Exchange(m, dnsAddr)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "10.0.0.5" {
		t.Errorf("web.shop.mesh: got %v, want one A 10.0.0.5", r.Answer)
	}
}

// TestRunCertDirMetrics runs the sidecar on a certificate directory: its
// metrics show the certificate it presents and its trust bundle.
func TestRunCertDirMetrics(t *testing.T) {
	c, err := ca.Init(filepath.Join(t.TempDir(), "ca"), spiffeid.RequireTrustDomainFromString("a.example"))
	if err != nil {
		t.Fatal(err)
	}
	certs := filepath.Join(t.TempDir(), "certs")
	if _, err := c.IssueDir(certs, spiffeid.RequireFromString("spiffe://a.example/ns/default/sa/web"), nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	cfg := loopback(testnet.FreePort(t, "tcp"), testnet.FreePort(t, "tcp"))
	cfg.MTLS.MeshCIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	start(t, Options{Config: cfg, Certs: Certs{Dir: certs}})

	resp, err := http.Get("http://" + cfg.Metrics.Address.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`meshgate_tls_certificate_expiry_timestamp_seconds{root_key_id="`,
		`spiffe_id="spiffe://a.example/ns/default/sa/web"`,
		`meshgate_tls_trust_bundle_roots{trust_domain="a.example"} 1`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestRunRefusesRegistryWithoutDNS pins the one check Options adds to the
// config's.
func TestRunRefusesRegistryWithoutDNS(t *testing.T) {
	err := Run(context.Background(), Options{Config: proxy.DefaultConfig(), Registry: &Registry{Path: "r.yaml"}})
	if want := `--registry: its names are answered by the DNS proxy, which --dns-listen "" turns off`; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}
