package proxy

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"
)

// testConfig is DefaultConfig on free loopback ports.
func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Outbound.Port = 0
	cfg.Inbound.Port = 0
	lo := netip.MustParseAddr("127.0.0.1")
	cfg.Admin.Address = netip.AddrPortFrom(lo, 0)
	cfg.Metrics.Address = netip.AddrPortFrom(lo, 0)
	cfg.Health.Address = netip.AddrPortFrom(lo, 0)
	cfg.Timeouts.DrainGrace = Duration(5 * time.Second)
	return cfg
}

func TestDefaultConfigIsDesign(t *testing.T) {
	// shared/DESIGN.md §3.
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("DefaultConfig does not validate: %v", err)
	}
	for _, tc := range []struct{ name, got, want string }{
		{"outbound", itoa(c.Outbound.Port), "15001"},
		{"inbound", itoa(c.Inbound.Port), "15006"},
		{"admin", c.Admin.Address.String(), "127.0.0.1:15000"},
		{"metrics", c.Metrics.Address.String(), "0.0.0.0:15020"},
		{"health", c.Health.Address.String(), "0.0.0.0:15021"},
		{"mark", c.Mark.String(), "0x539"},
		{"source4", c.Inbound.PassthroughSourceIPv4.String(), "127.0.0.6"},
		{"source6", c.Inbound.PassthroughSourceIPv6.String(), "::6"},
		{"connect", c.Timeouts.Connect.String(), "10s"},
		{"idle", c.Timeouts.Idle.String(), "1h0m0s"},
		{"drain", c.Timeouts.DrainGrace.String(), "5s"},
		{"mode", string(c.Mode), "redirect"},
		{"log", c.LogLevel, "info"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %s, want %s", tc.name, tc.got, tc.want)
		}
	}
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		want   string // full text, one problem per line; "" for valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"tproxy", func(c *Config) { c.Mode = ModeTProxy }, ""},
		{"mark zero disables marking", func(c *Config) { c.Mark = 0 }, ""},
		{"zero grace", func(c *Config) { c.Timeouts.DrainGrace = 0 }, ""},
		{"ports zero for tests", func(c *Config) { *c = testConfig() }, ""},
		{"bad mode", func(c *Config) { c.Mode = "nat" },
			`mode: "nat" is not a mode; want redirect or tproxy`},
		{"bad log level", func(c *Config) { c.LogLevel = "verbose" },
			`logLevel: "verbose" is not a level; want debug, info, warn or error`},
		{"zero connect", func(c *Config) { c.Timeouts.Connect = 0 },
			"timeouts.connect: must be > 0, e.g. 5s"},
		{"negative idle", func(c *Config) { c.Timeouts.Idle = Duration(-time.Second) },
			"timeouts.idle: must be > 0, e.g. 1h"},
		{"negative grace", func(c *Config) { c.Timeouts.DrainGrace = Duration(-time.Second) },
			"timeouts.drainGrace: must be >= 0, e.g. 5s"},
		{"v6 source for v4", func(c *Config) { c.Inbound.PassthroughSourceIPv4 = netip.MustParseAddr("::6") },
			"inbound.passthroughSourceIPv4: want an IPv4 address, e.g. 127.0.0.6"},
		{"v4-mapped source for v6", func(c *Config) { c.Inbound.PassthroughSourceIPv6 = netip.MustParseAddr("::ffff:127.0.0.6") },
			"inbound.passthroughSourceIPv6: want an IPv6 address, e.g. ::6"},
		{"missing admin address", func(c *Config) { c.Admin.Address = netip.AddrPort{} },
			"admin.address: want an IP:port address, e.g. 127.0.0.1:15000"},
		{"inbound on outbound port", func(c *Config) { c.Inbound.Port = 15001 },
			"inbound.port: port 15001 is also outbound.port; give each listener its own port"},
		{"metrics on health port", func(c *Config) { c.Health.Address = netip.MustParseAddrPort("0.0.0.0:15020") },
			"health.address: port 15020 is also metrics.address; give each listener its own port"},
		{"everything wrong at once", func(c *Config) {
			c.Mode = ""
			c.LogLevel = ""
			c.Inbound.PassthroughSourceIPv4 = netip.Addr{}
			c.Inbound.PassthroughSourceIPv6 = netip.Addr{}
			c.Metrics.Address = netip.AddrPort{}
			c.Health.Address = netip.MustParseAddrPort("127.0.0.1:15006")
			c.Timeouts = Timeouts{Connect: -1, Idle: 0, DrainGrace: -1}
		}, strings.Join([]string{
			`mode: "" is not a mode; want redirect or tproxy`,
			`logLevel: "" is not a level; want debug, info, warn or error`,
			"inbound.passthroughSourceIPv4: want an IPv4 address, e.g. 127.0.0.6",
			"inbound.passthroughSourceIPv6: want an IPv6 address, e.g. ::6",
			"metrics.address: want an IP:port address, e.g. 0.0.0.0:15020",
			"health.address: port 15006 is also inbound.port; give each listener its own port",
			"timeouts.connect: must be > 0, e.g. 5s",
			"timeouts.idle: must be > 0, e.g. 1h",
			"timeouts.drainGrace: must be >= 0, e.g. 5s",
		}, "\n")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.modify(&c)
			got := ""
			if err := c.Validate(); err != nil {
				got = err.Error()
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Validate() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		want    func(*Config) // applied to DefaultConfig
		wantErr string
	}{
		{name: "empty file is the defaults", yaml: "", want: func(*Config) {}},
		{name: "comments only", yaml: "# nothing\n", want: func(*Config) {}},
		{name: "overrides only what it names", yaml: "timeouts:\n  connect: 2s\n", want: func(c *Config) {
			c.Timeouts.Connect = Duration(2 * time.Second)
		}},
		{name: "everything", yaml: `
mode: tproxy
logLevel: debug
mark: 0x1
outbound: {port: 16001}
inbound:
  port: 16006
  passthroughSourceIPv4: 127.0.0.7
  passthroughSourceIPv6: "::7"
admin: {address: "[::1]:16000"}
metrics: {address: "0.0.0.0:16020"}
health: {address: "10.0.0.1:16021"}
timeouts: {connect: 1s, idle: 30m, drainGrace: 0s}
`, want: func(c *Config) {
			*c = Config{
				Mode: ModeTProxy, LogLevel: "debug", Mark: 1,
				Outbound: OutboundConfig{Port: 16001},
				Inbound: InboundConfig{Port: 16006,
					PassthroughSourceIPv4: netip.MustParseAddr("127.0.0.7"),
					PassthroughSourceIPv6: netip.MustParseAddr("::7")},
				Admin:    ServerConfig{Address: netip.MustParseAddrPort("[::1]:16000")},
				Metrics:  ServerConfig{Address: netip.MustParseAddrPort("0.0.0.0:16020")},
				Health:   ServerConfig{Address: netip.MustParseAddrPort("10.0.0.1:16021")},
				Timeouts: Timeouts{Connect: Duration(time.Second), Idle: Duration(30 * time.Minute)},
			}
		}},
		{name: "mark in decimal", yaml: "mark: 1337", want: func(c *Config) { c.Mark = 0x539 }},
		{name: "mark as a hex string", yaml: `mark: "0x10"`, want: func(c *Config) { c.Mark = 16 }},
		{name: "null section keeps defaults", yaml: "timeouts:\n", want: func(*Config) {}},

		{name: "unknown top-level field", yaml: "port: 1",
			wantErr: "port: unknown field; want one of mode, logLevel, mark, outbound, inbound, admin, metrics, health, timeouts"},
		{name: "unknown nested field", yaml: "timeouts:\n  read: 1s",
			wantErr: "timeouts.read: unknown field; want one of connect, idle, drainGrace"},
		{name: "field names are case-sensitive", yaml: "logLEVEL: debug",
			wantErr: "logLEVEL: unknown field; want one of mode, logLevel, mark, outbound, inbound, admin, metrics, health, timeouts"},
		{name: "port out of range", yaml: "outbound:\n  port: 70000",
			wantErr: "outbound.port: 70000 is not a port; want a number from 0 to 65535"},
		{name: "port as a string", yaml: "inbound:\n  port: \"15006\"",
			wantErr: `inbound.port: "15006" is not a port; want a number from 0 to 65535`},
		{name: "bad address", yaml: "inbound:\n  passthroughSourceIPv4: localhost",
			wantErr: `inbound.passthroughSourceIPv4: "localhost" is not an IP address; want e.g. 127.0.0.6 or ::6`},
		{name: "address without port", yaml: "admin:\n  address: 127.0.0.1",
			wantErr: `admin.address: "127.0.0.1" is not an IP:port address; want e.g. 127.0.0.1:15000 or [::1]:15000`},
		{name: "duration without unit", yaml: "timeouts:\n  idle: 60",
			wantErr: `timeouts.idle: 60 is not a duration; want a number with a unit, e.g. "5s" or "1m30s"`},
		{name: "bad duration", yaml: "timeouts:\n  idle: forever",
			wantErr: `timeouts.idle: "forever" is not a duration; want a number with a unit, e.g. "5s" or "1m30s"`},
		{name: "mark too big", yaml: "mark: 0x100000000",
			wantErr: "mark: 4294967296 is not a mark; want a 32-bit number, e.g. 0x539 or 1337"},
		{name: "section as a scalar", yaml: "outbound: 15001",
			wantErr: "outbound: want a section with fields port"},
		{name: "list at the top", yaml: "- mode: redirect",
			wantErr: "config: want a section with fields mode, logLevel, mark, outbound, inbound, admin, metrics, health, timeouts"},
		{name: "duplicate field", yaml: "mode: redirect\nmode: tproxy",
			wantErr: `yaml: line 2: key "mode" already set in map`},
		{name: "not yaml", yaml: "mode: [",
			wantErr: "yaml: line 1: did not find expected node content"},
		{name: "every problem at once", yaml: "mode: 1\nfoo: 1\ntimeouts:\n  connect: x\n  bar: 2\n",
			wantErr: strings.Join([]string{
				"foo: unknown field; want one of mode, logLevel, mark, outbound, inbound, admin, metrics, health, timeouts",
				"mode: 1 is not a string",
				"timeouts.bar: unknown field; want one of connect, idle, drainGrace",
				`timeouts.connect: "x" is not a duration; want a number with a unit, e.g. "5s" or "1m30s"`,
			}, "\n")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseConfig([]byte(tc.yaml))
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseConfig succeeded, want error %q", tc.wantErr)
				}
				if diff := cmp.Diff(tc.wantErr, err.Error()); diff != "" {
					t.Errorf("error mismatch (-want +got):\n%s", diff)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := DefaultConfig()
			tc.want(&want)
			if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
				cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("config mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	good := write("good.yaml", "logLevel: debug\n")
	c, err := LoadConfig(good)
	if err != nil {
		t.Fatal(err)
	}
	if c.LogLevel != "debug" || c.Outbound.Port != DefaultOutboundPort {
		t.Errorf("LoadConfig = %+v, want defaults with logLevel debug", c)
	}

	invalid := write("invalid.yaml", "timeouts:\n  connect: 0s\n  idle: -1s\n")
	_, err = LoadConfig(invalid)
	want := "proxy: config " + invalid + ": timeouts.connect: must be > 0, e.g. 5s\ntimeouts.idle: must be > 0, e.g. 1h"
	if err == nil || err.Error() != want {
		t.Errorf("LoadConfig(invalid) = %v, want %q", err, want)
	}

	_, err = LoadConfig(filepath.Join(dir, "missing.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadConfig(missing) = %v, want ErrNotExist", err)
	}
}

// TestConfigRoundTrip checks that what /config prints reads back the same.
func TestConfigRoundTrip(t *testing.T) {
	for _, c := range []Config{DefaultConfig(), testConfig()} {
		b, err := yaml.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseConfig(b)
		if err != nil {
			t.Fatalf("ParseConfig(%s): %v", b, err)
		}
		if got != c {
			t.Errorf("round trip of\n%s\ngave %+v, want %+v", b, got, c)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	b, _ := yaml.Marshal(DefaultConfig())
	f.Add(b)
	for _, s := range []string{"", "mark: 0x539", "timeouts: {connect: 1s}", "outbound: {port: 70000}",
		"admin: {address: '[::1]:1'}", "a: [", "- 1", "mode: tproxy\nmode: redirect", "inbound: {passthroughSourceIPv6: '::6'}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		// Whatever parses, valid or not, prints and reads back the same.
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("Marshal(%+v): %v", c, err)
		}
		again, err := ParseConfig(out)
		if err != nil {
			t.Fatalf("ParseConfig(Marshal(c)) for %q: %v\n%s", data, err, out)
		}
		if again != c {
			t.Fatalf("round trip of %q: got %+v, want %+v", data, again, c)
		}
		_ = c.Validate()
	})
}
