package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"meshgate/intercept"
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
	cfg.AccessLog = true // the tests read it
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
		{"handshake", c.Timeouts.Handshake.String(), "10s"},
		{"idle", c.Timeouts.Idle.String(), "1h0m0s"},
		{"drain", c.Timeouts.DrainGrace.String(), "5s"},
		{"mode", string(c.Mode), "redirect"},
		{"log", c.LogLevel, "info"},
		{"mtls mode: resolved at New", string(c.MTLS.Mode), ""},
		{"plaintext outside the mesh", strconv.FormatBool(c.MTLS.PlaintextOutsideMesh), "true"},
		{"greeting hold", c.MTLS.GreetingHold.String(), "10ms"},
		{"mesh CIDRs", fmt.Sprint(c.MTLS.MeshCIDRs), "[]"},
		{"detect timeout", c.Protocols.DetectTimeout.String(), "1s"},
		{"server-first memory", c.Protocols.ServerFirstMemory.String(), "10m0s"},
		{"opaque ports", fmt.Sprint(c.Protocols.Ports), "map[22:opaque 25:opaque 53:opaque 110:opaque 143:opaque 587:opaque 3306:opaque 4444:opaque 5432:opaque 6379:opaque 9300:opaque 11211:opaque 27017:opaque]"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %s, want %s", tc.name, tc.got, tc.want)
		}
	}
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }

// configOpts compare Configs: netip and spiffeid values by value, and an
// empty list or map as none.
var configOpts = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	cmp.Comparer(func(a, b spiffeid.ID) bool { return a == b }),
	cmpopts.EquateEmpty(),
}

func mustID(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		want   string // full text, one problem per line; "" for valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"tproxy", func(c *Config) { c.Mode = intercept.ModeTProxy }, ""},
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
		{"load balancing", func(c *Config) {
			c.LoadBalancing = LoadBalancingConfig{Policy: "random", OutlierDetection: OutlierDetectionConfig{
				ConsecutiveFailures: -1, BaseEjectionTime: Duration(time.Minute), MaxEjectionTime: Duration(time.Second), MaxEjectionPercent: 101}}
		}, `loadBalancing.policy: "random" is not a policy; want p2c-peak-ewma, round-robin or least-request
loadBalancing.decay: must be > 0, e.g. 10s
loadBalancing.connectAttempts: must be 1 or more, e.g. 3
loadBalancing.outlierDetection.consecutiveFailures: must be >= 0 (0: no ejection), e.g. 5
loadBalancing.outlierDetection.maxEjectionTime: must be >= baseEjectionTime (1m0s), e.g. 5m
loadBalancing.outlierDetection.maxEjectionPercent: must be 1 to 100, e.g. 50`},
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
		{"mtls strict with mesh", func(c *Config) {
			c.MTLS.Mode = MTLSStrict
			c.MTLS.PortModes = map[uint16]MTLSMode{8080: MTLSPermissive, 9090: MTLSDisable}
			c.MTLS.MeshCIDRs = prefixes("10.0.0.0/8", "fd00::/8")
			c.MTLS.Destinations = []MTLSDestination{
				{CIDR: netip.MustParsePrefix("10.1.0.0/16"), Identity: mustID("spiffe://cluster.local/ns/a/sa/b")},
				{CIDR: netip.MustParsePrefix("10.1.2.3/32"), Identity: mustID("spiffe://cluster.local/ns/a/sa/c")},
				{CIDR: netip.MustParsePrefix("fd00::/64"), Identity: mustID("spiffe://cluster.local/ns/a/sa/d")},
			}
			c.MTLS.GreetingHold = 0
		}, ""},
		{"bad protocols", func(c *Config) {
			c.Protocols.DetectTimeout = 0
			c.Protocols.Ports = map[uint16]PortProtocol{0: PortOpaque, 8080: "h2", 3306: PortDetect}
			c.Protocols.ServerFirstMemory = Duration(-time.Second)
		}, strings.Join([]string{
			"protocols.detectTimeout: must be > 0, e.g. 1s",
			"protocols.ports.0: 0 is not a port; want a number from 1 to 65535",
			`protocols.ports.8080: "h2" is not a declaration; want opaque, detect or http`,
			"protocols.destMemory: must be >= 0, e.g. 10m",
		}, "\n")},
		{"zero handshake timeout", func(c *Config) { c.Timeouts.Handshake = 0 },
			"timeouts.handshake: must be > 0, e.g. 10s"},
		{"bad mtls mode", func(c *Config) { c.MTLS.Mode = "on" },
			`mtls.mode: "on" is not a mode; want strict, permissive or disable, or leave it unset`},
		{"bad port modes", func(c *Config) {
			c.MTLS.PortModes = map[uint16]MTLSMode{0: MTLSStrict, 8080: "", 80: "lax"}
		}, strings.Join([]string{
			"mtls.portModes.0: 0 is not a port; want a number from 1 to 65535",
			`mtls.portModes.80: "lax" is not a mode; want strict, permissive or disable`,
			`mtls.portModes.8080: "" is not a mode; want strict, permissive or disable`,
		}, "\n")},
		{"bad mesh CIDRs", func(c *Config) {
			c.MTLS.MeshCIDRs = []netip.Prefix{{}, netip.MustParsePrefix("10.1.2.3/8"),
				netip.MustParsePrefix("::ffff:10.0.0.0/104"), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8")}
		}, strings.Join([]string{
			"mtls.meshCIDRs[0]: want a CIDR, e.g. 10.0.0.0/8 or fd00::/8",
			"mtls.meshCIDRs[1]: 10.1.2.3/8: bits set past the /8; want 10.0.0.0/8",
			"mtls.meshCIDRs[2]: ::ffff:10.0.0.0/104: IPv4-mapped, so it would never match; write it as IPv4, e.g. 10.0.0.0/8",
			"mtls.meshCIDRs[4]: 10.0.0.0/8 is also mtls.meshCIDRs[3]; list it once",
		}, "\n")},
		{"destinations outside the mesh CIDRs", func(c *Config) {
			c.MTLS.Destinations = []MTLSDestination{{CIDR: netip.MustParsePrefix("10.0.1.0/24"), Identity: mustID("spiffe://td/ns/a/sa/b")}}
		}, ""},
		{"bad destinations", func(c *Config) {
			id := mustID("spiffe://cluster.local/ns/a/sa/b")
			c.MTLS.Destinations = []MTLSDestination{
				{CIDR: netip.MustParsePrefix("10.0.1.0/24")},
				{Identity: id},
				{CIDR: netip.MustParsePrefix("10.0.1.0/24"), Identity: id},
				{CIDR: netip.MustParsePrefix("10.0.1.1/24"), Identity: id},
			}
		}, strings.Join([]string{
			"mtls.destinations[0].identity: want a SPIFFE ID, e.g. spiffe://cluster.local/ns/default/sa/web",
			"mtls.destinations[1].cidr: want a CIDR, e.g. 10.0.0.0/8 or fd00::/8",
			"mtls.destinations[2].cidr: 10.0.1.0/24 is also mtls.destinations[0].cidr; give each CIDR one identity",
			"mtls.destinations[3].cidr: 10.0.1.1/24: bits set past the /24; want 10.0.1.0/24",
		}, "\n")},
		{"negative greeting hold", func(c *Config) { c.MTLS.GreetingHold = Duration(-time.Millisecond) },
			"mtls.greetingHold: must be >= 0, e.g. 10ms"},
		{"everything wrong at once", func(c *Config) {
			c.Mode = ""
			c.LogLevel = ""
			c.Inbound.PassthroughSourceIPv4 = netip.Addr{}
			c.Inbound.PassthroughSourceIPv6 = netip.Addr{}
			c.Metrics.Address = netip.AddrPort{}
			c.Health.Address = netip.MustParseAddrPort("127.0.0.1:15006")
			c.Timeouts = Timeouts{Connect: -1, Handshake: 1, Idle: 0, DrainGrace: -1}
			c.MTLS.Mode = "x"
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
			`mtls.mode: "x" is not a mode; want strict, permissive or disable, or leave it unset`,
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
timeouts: {connect: 1s, handshake: 2s, idle: 30m, drainGrace: 0s}
mtls:
  mode: permissive
  portModes: {8080: strict, "9090": disable}
  meshCIDRs: [10.0.0.0/8, "fd00::/8"]
  plaintextOutsideMesh: false
  destinations:
  - {cidr: 10.1.0.0/16, identity: "spiffe://cluster.local/ns/shop/sa/payments"}
  greetingHold: 5ms
protocols:
  detectTimeout: 300ms
  ports: {3306: detect, 7000: opaque}
  destMemory: 0s
loadBalancing:
  policy: least-request
  decay: 2s
  connectAttempts: 1
  outlierDetection: {consecutiveFailures: 0, baseEjectionTime: 1s, maxEjectionTime: 1m, maxEjectionPercent: 100}
limits:
  inbound: {maxConnections: 100, maxConnectionsPerSourceIP: 10, maxConnectionsPerIdentity: 5, requestHeaderTimeout: 3s,
    minRequestBodyRate: {bytesPerSecond: 100, window: 5s}, maxRequestHeaderBytes: 8192, maxRequestBodyBytes: 1000000,
    maxConcurrentStreams: 10, keepAliveTimeout: 1m}
  outbound: {maxConnections: 200}
`, want: func(c *Config) {
			out := defaultLimits().Outbound
			out.MaxConnections = 200
			defer func() {
				c.Limits = LimitsConfig{Outbound: out, Inbound: DirectionLimits{MaxConnections: 100, MaxConnectionsPerSourceIP: 10,
					MaxConnectionsPerIdentity: 5, RequestHeaderTimeout: Duration(3 * time.Second),
					MinRequestBodyRate:    BodyRate{BytesPerSecond: 100, Window: Duration(5 * time.Second)},
					MaxRequestHeaderBytes: 8192, MaxRequestBodyBytes: 1000000, MaxConcurrentStreams: 10, KeepAliveTimeout: Duration(time.Minute)}}
			}()
			*c = Config{
				Mode: intercept.ModeTProxy, LogLevel: "debug", Mark: 1,
				Outbound: OutboundConfig{Port: 16001},
				Inbound: InboundConfig{Port: 16006,
					PassthroughSourceIPv4: netip.MustParseAddr("127.0.0.7"),
					PassthroughSourceIPv6: netip.MustParseAddr("::7")},
				Admin:    ServerConfig{Address: netip.MustParseAddrPort("[::1]:16000")},
				Metrics:  ServerConfig{Address: netip.MustParseAddrPort("0.0.0.0:16020")},
				Health:   ServerConfig{Address: netip.MustParseAddrPort("10.0.0.1:16021")},
				Timeouts: Timeouts{Connect: Duration(time.Second), Handshake: Duration(2 * time.Second), Idle: Duration(30 * time.Minute)},
				MTLS: MTLSConfig{
					Mode:      MTLSPermissive,
					PortModes: map[uint16]MTLSMode{8080: MTLSStrict, 9090: MTLSDisable},
					MeshCIDRs: prefixes("10.0.0.0/8", "fd00::/8"),
					Destinations: []MTLSDestination{{CIDR: netip.MustParsePrefix("10.1.0.0/16"),
						Identity: mustID("spiffe://cluster.local/ns/shop/sa/payments")}},
					GreetingHold: Duration(5 * time.Millisecond),
				},
				Protocols: ProtocolsConfig{DetectTimeout: Duration(300 * time.Millisecond),
					Ports:             map[uint16]PortProtocol{22: PortOpaque, 25: PortOpaque, 53: PortOpaque, 110: PortOpaque, 143: PortOpaque, 587: PortOpaque, 3306: PortDetect, 4444: PortOpaque, 5432: PortOpaque, 6379: PortOpaque, 7000: PortOpaque, 9300: PortOpaque, 11211: PortOpaque, 27017: PortOpaque},
					ServerFirstMemory: 0, L7: true},
				LoadBalancing: LoadBalancingConfig{Policy: PolicyLeastRequest, Decay: Duration(2 * time.Second), ConnectAttempts: 1,
					OutlierDetection: OutlierDetectionConfig{BaseEjectionTime: Duration(time.Second), MaxEjectionTime: Duration(time.Minute), MaxEjectionPercent: 100}},
			}
		}},
		{name: "mark in decimal", yaml: "mark: 1337", want: func(c *Config) { c.Mark = 0x539 }},
		{name: "mark as a hex string", yaml: `mark: "0x10"`, want: func(c *Config) { c.Mark = 16 }},
		{name: "null section keeps defaults", yaml: "timeouts:\n", want: func(*Config) {}},

		{name: "unknown top-level field", yaml: "port: 1",
			wantErr: "port: unknown field; want one of mode, logLevel, accessLog, mark, outbound, inbound, admin, metrics, health, timeouts, mtls, protocols, loadBalancing, policy, access, rateLimits, redis, limits, resilience"},
		{name: "unknown nested field", yaml: "timeouts:\n  read: 1s",
			wantErr: "timeouts.read: unknown field; want one of connect, handshake, idle, drainGrace"},
		{name: "field names are case-sensitive", yaml: "logLEVEL: debug",
			wantErr: "logLEVEL: unknown field; want one of mode, logLevel, accessLog, mark, outbound, inbound, admin, metrics, health, timeouts, mtls, protocols, loadBalancing, policy, access, rateLimits, redis, limits, resilience"},
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
			wantErr: "config: want a section with fields mode, logLevel, accessLog, mark, outbound, inbound, admin, metrics, health, timeouts, mtls, protocols, loadBalancing, policy, access, rateLimits, redis, limits, resilience"},
		{name: "mtls values that do not parse", yaml: `
mtls:
  mode: 1
  portModes: {http: strict, 70000: strict, 8080: [strict]}
  meshCIDRs: [10.0.0.0, 10.0.0.0/33, {cidr: 1}]
  destinations:
  - {cidr: 10.0.0.0/8, identity: "https://example.org/x"}
  - {cidr: 10.0.0.0/8, identity: "spiffe://example.org/a/../b", name: x}
  - 10.0.0.0/8
`, wantErr: strings.Join([]string{
			"mtls.destinations[0].identity: \"https://example.org/x\" is not a SPIFFE ID (scheme is missing or invalid); want e.g. spiffe://cluster.local/ns/default/sa/web",
			"mtls.destinations[1].identity: \"spiffe://example.org/a/../b\" is not a SPIFFE ID (path cannot contain dot segments); want e.g. spiffe://cluster.local/ns/default/sa/web",
			"mtls.destinations[1].name: unknown field; want one of cidr, identity",
			"mtls.destinations[2]: want a section with fields cidr, identity",
			`mtls.meshCIDRs[0]: "10.0.0.0" is not a CIDR; want e.g. 10.0.0.0/8 or fd00::/8`,
			`mtls.meshCIDRs[1]: "10.0.0.0/33" is not a CIDR; want e.g. 10.0.0.0/8 or fd00::/8`,
			"mtls.meshCIDRs[2]: a section is not a CIDR; want e.g. 10.0.0.0/8 or fd00::/8",
			"mtls.mode: 1 is not a string",
			`mtls.portModes.70000: "70000" is not a port; want a number from 1 to 65535`,
			"mtls.portModes.8080: a list is not a string",
			`mtls.portModes.http: "http" is not a port; want a number from 1 to 65535`,
		}, "\n")},
		{name: "mtls lists of the wrong shape", yaml: "mtls: {meshCIDRs: 10.0.0.0/8, portModes: [1], destinations: {a: 1}}",
			wantErr: strings.Join([]string{
				"mtls.destinations: want a list",
				"mtls.meshCIDRs: want a list",
				"mtls.portModes: want a map",
			}, "\n")},
		{name: "duplicate field", yaml: "mode: redirect\nmode: tproxy",
			wantErr: `yaml: line 2: key "mode" already set in map`},
		{name: "not yaml", yaml: "mode: [",
			wantErr: "yaml: line 1: did not find expected node content"},
		{name: "every problem at once", yaml: "mode: 1\nfoo: 1\ntimeouts:\n  connect: x\n  bar: 2\n",
			wantErr: strings.Join([]string{
				"foo: unknown field; want one of mode, logLevel, accessLog, mark, outbound, inbound, admin, metrics, health, timeouts, mtls, protocols, loadBalancing, policy, access, rateLimits, redis, limits, resilience",
				"mode: 1 is not a string",
				"timeouts.bar: unknown field; want one of connect, handshake, idle, drainGrace",
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
			if diff := cmp.Diff(want, got, configOpts); diff != "" {
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
	if c.LogLevel != "debug" || c.Outbound.Port != intercept.OutboundPort {
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
	full := DefaultConfig()
	full.MTLS = MTLSConfig{Mode: MTLSStrict, PortModes: map[uint16]MTLSMode{8080: MTLSPermissive},
		MeshCIDRs:    prefixes("10.0.0.0/8"),
		Destinations: []MTLSDestination{{CIDR: netip.MustParsePrefix("10.1.0.0/16"), Identity: mustID("spiffe://td/ns/a/sa/b")}}}
	for _, c := range []Config{DefaultConfig(), testConfig(), full} {
		b, err := yaml.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseConfig(b)
		if err != nil {
			t.Fatalf("ParseConfig(%s): %v", b, err)
		}
		if diff := cmp.Diff(c, got, configOpts); diff != "" {
			t.Errorf("round trip of\n%s\nmismatch (-want +got):\n%s", b, diff)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	b, _ := yaml.Marshal(DefaultConfig())
	f.Add(b)
	for _, s := range []string{"", "mark: 0x539", "timeouts: {connect: 1s}", "outbound: {port: 70000}",
		"admin: {address: '[::1]:1'}", "a: [", "- 1", "mode: tproxy\nmode: redirect", "inbound: {passthroughSourceIPv6: '::6'}",
		"mtls: {mode: strict, portModes: {8080: permissive}, meshCIDRs: [10.0.0.0/8]}",
		"mtls: {destinations: [{cidr: 10.1.0.0/16, identity: 'spiffe://td/ns/a/sa/b'}]}"} {
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
		if diff := cmp.Diff(c, again, configOpts); diff != "" {
			t.Fatalf("round trip of %q mismatch (-want +got):\n%s", data, diff)
		}
		_ = c.Validate()
	})
}
