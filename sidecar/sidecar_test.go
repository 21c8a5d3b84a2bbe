package sidecar

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"

	"meshgate/internal/testnet"
	"meshgate/proxy"
)

// TestRunAnswersRegistryNames starts a whole sidecar as "meshgate proxy"
// does, waits for it with WaitReady, and asks its DNS proxy a name of its
// registry; ending ctx stops it cleanly.
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
	healthPort := testnet.FreePort(t, "tcp")
	dnsAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), testnet.FreePort(t, "udp")).String()
	cfg := proxy.DefaultConfig()
	cfg.LogLevel = "error"
	cfg.Outbound.Port, cfg.Inbound.Port = 0, 0
	cfg.Admin.Address = netip.MustParseAddrPort("127.0.0.1:0")
	cfg.Metrics.Address = netip.MustParseAddrPort("127.0.0.1:0")
	cfg.Health.Address = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), healthPort)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{Config: cfg, DNSListen: []string{dnsAddr}, ResolvConf: filepath.Join(dir, "none"), Registry: reg})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := WaitReady(wctx, (&net.Dialer{}).DialContext, healthPort, nil); err != nil {
		t.Fatal(err)
	}
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

// TestRunRefusesRegistryWithoutDNS pins the one check Options adds to the
// config's.
func TestRunRefusesRegistryWithoutDNS(t *testing.T) {
	err := Run(context.Background(), Options{Config: proxy.DefaultConfig(), Registry: &Registry{Path: "r.yaml"}})
	if want := `--registry: its names are answered by the DNS proxy, which --dns-listen "" turns off`; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}
