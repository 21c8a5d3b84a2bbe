package redirect

import (
	"net/netip"
	"testing"

	"meshgate/intercept"
)

func TestInboundProbePort(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Config)
		port uint16
		ok   bool
	}{
		{"every port", func(*Config) {}, 15999, true},
		{"every port but the probe's", func(c *Config) { c.ExcludeInboundPorts = []uint16{15999, 15998} }, 15997, true},
		{"listed ports", func(c *Config) { c.InboundAllPorts, c.InboundPorts = false, []uint16{8080, 9090} }, 8080, true},
		{"none", func(c *Config) { c.InboundAllPorts = false }, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.edit(&c)
			port, ok := inboundProbePort(c)
			if port != tc.port || ok != tc.ok {
				t.Errorf("got %d %v, want %d %v", port, ok, tc.port, tc.ok)
			}
		})
	}
}

func TestInboundNotChecked(t *testing.T) {
	c := DefaultConfig()
	if why := inboundNotChecked(c); why != "" {
		t.Errorf("default config: %q", why)
	}
	c.Mode = intercept.ModeTProxy
	if why := inboundNotChecked(c); why != "tproxy mode captures connections arriving from outside the namespace only" {
		t.Errorf("tproxy: %q", why)
	}
	c = DefaultConfig()
	c.InboundAllPorts = false
	if why := inboundNotChecked(c); why != "no inbound port is captured" {
		t.Errorf("no inbound: %q", why)
	}
}

func TestOutboundProbe(t *testing.T) {
	uid := uint32(1337)
	for _, tc := range []struct {
		name       string
		edit       func(*Config)
		euid, egid uint32
		dst        string
		why        string
	}{
		{"default, as root", func(*Config) {}, 0, 0, "192.0.2.1:80", ""},
		{"port 80 excluded", func(c *Config) { c.ExcludeOutboundPorts = []uint16{80, 443} }, 0, 0, "192.0.2.1:8080", ""},
		{"included", func(c *Config) {
			c.IncludeOutboundAll, c.IncludeOutboundCIDRs = false, []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
		}, 0, 0, "192.0.2.1:80", ""},
		{"not included", func(c *Config) {
			c.IncludeOutboundAll, c.IncludeOutboundCIDRs = false, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
		}, 0, 0, "", "--include-outbound-cidrs does not cover 192.0.2.1, the probe address"},
		{"excluded", func(c *Config) { c.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("192.0.0.0/8")} }, 0, 0, "",
			"--exclude-outbound-cidrs covers 192.0.2.1, the probe address"},
		{"run as the proxy", func(c *Config) { c.ProxyUID = &uid }, 1337, 1337, "",
			"this process runs as UID 1337, the proxy's, whose connections are never captured"},
		{"run in a proxy group", func(c *Config) { c.ProxyGIDs = []uint32{7} }, 1000, 7, "",
			"this process runs as GID 7, one of --proxy-gid, whose connections are never captured"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.edit(&c)
			dst, why := outboundProbe(c, tc.euid, tc.egid)
			got := ""
			if dst.IsValid() {
				got = dst.String()
			}
			if got != tc.dst || why != tc.why {
				t.Errorf("got %q %q, want %q %q", got, why, tc.dst, tc.why)
			}
		})
	}
}

func TestSelfCheckError(t *testing.T) {
	e := &SelfCheckError{Direction: "inbound", Dst: netip.MustParseAddrPort("10.1.2.3:15999"), Port: 15006,
		Got: "it was refused: it went to the port itself, where nothing listens", Cause: causeNotInEffect}
	want := "redirect: self-check inbound: a connection to 10.1.2.3:15999 should have been redirected to port 15006 with original destination 10.1.2.3:15999, but it was refused: it went to the port itself, where nothing listens; likely cause: " + causeNotInEffect
	if e.Error() != want {
		t.Errorf("got  %s\nwant %s", e, want)
	}
}

func TestSelfCheckInvalidConfig(t *testing.T) {
	c := DefaultConfig()
	c.Mode = "magic"
	_, err := SelfCheck(t.Context(), c, Options{})
	if err == nil || err.Error() != `redirect: invalid config: --mode "magic": want redirect or tproxy` {
		t.Errorf("error %v", err)
	}
}
