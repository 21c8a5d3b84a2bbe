package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshgate/intercept"
	"meshgate/internal/confval"
	"meshgate/netlist"
	"meshgate/proxy/ratelimit"
	"meshgate/proxy/resilience"
)

// Config is the proxy's whole configuration: one YAML file whose fields
// override DefaultConfig. Field names are the YAML keys (see the json tags;
// sigs.k8s.io/yaml goes through encoding/json). Every field is typed, so
// after Validate the proxy trusts it as is.
type Config struct {
	// Mode is how the namespace's rules deliver inbound connections:
	// "redirect" (iptables REDIRECT; the original destination comes from
	// SO_ORIGINAL_DST) or "tproxy" (iptables TPROXY; the inbound listener is
	// IP_TRANSPARENT, the original destination is the accepted socket's
	// local address, and the app is dialed from the client's own address,
	// so it sees who called it). Outbound capture is REDIRECT in both modes.
	Mode intercept.Mode `json:"mode"`
	// LogLevel is debug, info, warn or error. The --log-level flag
	// overrides it.
	LogLevel string `json:"logLevel"`
	// AccessLog writes a JSON line per L7 request (logger "access", at
	// info) and one per connection ("connection closed", at info). Off
	// by default, as in Istio and Linkerd: in one peerbench run (issue 12)
	// the request lines took a fifth of the sidecar pair's CPU per
	// keep-alive request, and the connection lines a twentieth of the
	// client sidecar's per new connection. Off, the connection lines are
	// at debug. A request the proxy answered itself (a 502, a stage's
	// refusal) and a connection refused are logged at warn either way,
	// and every request and connection is counted in the metrics either way.
	AccessLog bool `json:"accessLog"`
	// Mark is the SO_MARK put on every connection the proxy dials, so the
	// capture rules (which exempt it) never send the proxy's own traffic
	// back to itself. Written as 0x539 or 1337. 0 dials unmarked and
	// relies on the proxy UID exemption alone.
	Mark Mark `json:"mark"`
	// Outbound is the listener for connections the app makes.
	Outbound OutboundConfig `json:"outbound"`
	// Inbound is the listener for connections made to the app.
	Inbound InboundConfig `json:"inbound"`
	// Admin serves /config, /quitquitquit and /debug/pprof/. Keep it on
	// loopback: it can stop the proxy.
	Admin ServerConfig `json:"admin"`
	// Metrics serves Prometheus /metrics.
	Metrics ServerConfig `json:"metrics"`
	// Health serves /healthz/ready and /healthz/live.
	Health ServerConfig `json:"health"`
	// Timeouts bound connecting, handshakes, idling and draining.
	Timeouts Timeouts `json:"timeouts"`
	// MTLS says which connections are mutual TLS between sidecars.
	MTLS MTLSConfig `json:"mtls"`
	// Protocols says how the proxy tells what a connection speaks.
	Protocols ProtocolsConfig `json:"protocols"`
	// LoadBalancing says how connections and requests to a service are
	// spread over its endpoints.
	LoadBalancing LoadBalancingConfig `json:"loadBalancing"`
	// Policy is authorization: who may call the app, and what the app
	// may call (authz.go, package policy). Hot-reloaded.
	Policy PolicyConfig `json:"policy"`
	// Access is IP allow and deny lists and header blocks (access.go).
	// Hot-reloaded.
	Access AccessConfig `json:"access"`
	// RateLimits limit how fast callers may call, per request or per new
	// connection (ratelimit_stage.go, package ratelimit). Hot-reloaded.
	RateLimits []ratelimit.Limit `json:"rateLimits"`
	// Redis is where global rate limits are counted; nil: none.
	// Hot-reloaded.
	Redis *ratelimit.RedisConfig `json:"redis"`
	// Limits protect the sidecar and its app from clients that hold
	// connections, send slowly or send too much (protect.go).
	Limits LimitsConfig `json:"limits"`
	// Resilience is how the app's outbound calls are kept from the
	// network's failures, per destination service and route: timeouts,
	// retries within a retry budget, circuit breakers, bulkheads,
	// fallbacks, mirroring and fault injection (package resilience,
	// whose Config says what each field does and its default). Empty by
	// default: every destination then gets the built-in defaults, under
	// which idempotent requests are retried up to 2 times on a connect
	// failure, a reset before any response byte and a 503, within a
	// budget of 20% of the destination's requests plus 3 a second.
	// Hot-reloaded.
	Resilience resilience.Config `json:"resilience"`
}

// LoadBalancingConfig is load balancing across a service's endpoints
// (shared/DESIGN.md §7). An outbound connection to an address the
// sidecar's DNS proxy answered for a mesh service (a registry service, or
// a name whose TXT record says it is meshed) goes to the endpoint the
// balancer picks, not necessarily the one the app picked; an L7 HTTP
// request is balanced on its own. Connections to other addresses go where
// the app sent them.
type LoadBalancingConfig struct {
	// Policy is p2c-peak-ewma (power of two choices over a peak-EWMA
	// latency estimate times requests in flight), round-robin, or
	// least-request (power of two choices over requests in flight).
	Policy string `json:"policy"`
	// Decay is how fast the peak-EWMA latency estimate forgets: a sample's
	// weight falls by e every Decay.
	Decay Duration `json:"decay"`
	// ConnectAttempts is how many endpoints a connection (or request) is
	// tried on when connecting or the mesh handshake fails, before the
	// failure is the app's. Nothing of the app's has been sent then, so a
	// try on another endpoint is always safe.
	ConnectAttempts int `json:"connectAttempts"`
	// OutlierDetection ejects failing endpoints for a while.
	OutlierDetection OutlierDetectionConfig `json:"outlierDetection"`
}

// OutlierDetectionConfig is passive outlier ejection: an endpoint whose
// connections or requests fail ConsecutiveFailures times in a row (connect
// or mesh handshake failure, reset before any byte, HTTP 502, 503 or 504)
// is left out of its service's balancing for BaseEjectionTime, longer each
// time it is ejected again, up to MaxEjectionTime.
type OutlierDetectionConfig struct {
	// ConsecutiveFailures is the failures in a row that eject; 0 turns
	// ejection off.
	ConsecutiveFailures int `json:"consecutiveFailures"`
	// BaseEjectionTime is the first ejection's length.
	BaseEjectionTime Duration `json:"baseEjectionTime"`
	// MaxEjectionTime bounds an ejection's length.
	MaxEjectionTime Duration `json:"maxEjectionTime"`
	// MaxEjectionPercent bounds the share of a service's endpoints
	// ejected at once (at least one of two or more may be).
	MaxEjectionPercent int `json:"maxEjectionPercent"`
}

// The load balancing policies.
const (
	PolicyP2CPeakEWMA  = "p2c-peak-ewma"
	PolicyRoundRobin   = "round-robin"
	PolicyLeastRequest = "least-request"
)

// ProtocolsConfig is protocol detection (shared/DESIGN.md §5). An
// outbound connection's first bytes are peeked and classified (package
// sniff: the app's own TLS, HTTP/1.x, HTTP/2, or opaque bytes) while the
// destination is dialed, so that a server that speaks first (MySQL,
// SMTP, SSH: server-first protocols) is heard at once and its greeting
// passed on: detection never waits for a client that waits for the
// server. Such a destination is then remembered as server-first and its
// next connections are not detected at all. An HTTP/2 server's SETTINGS
// frame, which grpc-go and others send as soon as they accept, is no such
// greeting: HTTP/2's client speaks first all the same, so the wait goes
// on for the app's bytes, which decide (gRPC is served as HTTP/2), and
// the SETTINGS is held until then; the same holds inbound.
type ProtocolsConfig struct {
	// DetectTimeout is how long a connection waits for the client's
	// first bytes before it is taken for opaque, when the server has not
	// spoken either: outbound, the app's; inbound, a plaintext client's
	// (permissive mode) or those carried by meshgate/tcp. It costs nothing
	// to server-first protocols (the server's greeting ends the wait; an
	// HTTP/2 server's SETTINGS does not) and is no delay to the
	// connection's bytes, which flow on as opaque.
	DetectTimeout Duration `json:"detectTimeout"`
	// Ports declares what is spoken at destination ports (outbound) and
	// at the app's ports (inbound): opaque (no detection and no wait: the
	// bytes pass as they are), detect, or http (served as HTTP whatever
	// the client sends first, but TLS: inbound, a request the sidecar's
	// HTTP server finds malformed is refused, never passed to the app as
	// bytes). The defaults declare the ports of well-known server-first
	// and binary protocols opaque (see DefaultOpaquePorts); list a port to
	// change it, e.g. {3306: detect, 7000: opaque, 8080: http}. Inbound
	// HTTP on a port declared opaque is not served as L7, so its app gets
	// no trustworthy X-Forwarded-Client-Cert; one that trusts that header
	// should have its port declared http.
	Ports map[uint16]PortProtocol `json:"ports"`
	// ServerFirstMemory is how long a destination whose server spoke first
	// is remembered as server-first (its outbound connections then skip
	// detection), and one whose clients spoke HTTP as HTTP (its
	// connections are not dialed while detecting, and inbound, a request
	// line left unfinished when the client pauses is served as HTTP). 0
	// remembers nothing.
	ServerFirstMemory Duration `json:"destMemory"`
	// L7 carries HTTP (HTTP/1.x and HTTP/2 from the app) to mesh
	// destinations request by request, with per-request metrics and
	// access logs: HTTP/1 over pooled keep-alive mTLS connections between
	// the sidecars (ALPN meshgate/http1), HTTP/2 over pooled, multiplexed
	// ones (meshgate/h2); the server sidecar speaks to its app in the
	// protocol the client app used. false passes HTTP as
	// opaque bytes, like any other protocol, over meshgate/tcp. It is the
	// client side's choice: inbound, HTTP detected on meshgate/tcp or
	// plaintext is served as L7 either way, so that X-Forwarded-Client-Cert
	// is always the sidecar's.
	L7 bool `json:"l7"`
}

// PortProtocol is a port's declared protocol, see ProtocolsConfig.Ports.
type PortProtocol string

// The port declarations.
const (
	PortOpaque PortProtocol = "opaque"
	PortDetect PortProtocol = "detect"
	PortHTTP   PortProtocol = "http"
)

// DefaultOpaquePorts are declared opaque by default: server-first
// protocols (SSH 22, SMTP 25 and 587, POP3 110, IMAP 143, MySQL/MariaDB
// 3306 and Galera 4444, PostgreSQL 5432 (client-first, but binary and
// latency-sensitive), Redis 6379, Elasticsearch transport 9300, memcached
// 11211, MongoDB 27017) and DNS over TCP (53).
var DefaultOpaquePorts = []uint16{22, 25, 53, 110, 143, 587, 3306, 4444, 5432, 6379, 9300, 11211, 27017}

// OutboundConfig configures the outbound capture listener.
type OutboundConfig struct {
	// Port is where the rules redirect the app's outbound connections; it
	// is bound on every IPv4 and IPv6 address. 0 picks a free port (tests).
	Port uint16 `json:"port"`
}

// InboundConfig configures the inbound capture listener and the
// connections it makes to the app.
type InboundConfig struct {
	// Port is where the rules redirect connections made to the app; it is
	// bound on every IPv4 and IPv6 address. 0 picks a free port (tests).
	Port uint16 `json:"port"`
	// PassthroughSourceIPv4 is the source address of the proxy's IPv4
	// connections to the app (in tproxy mode, of those not delivered by
	// TPROXY: the pod calling its own address); the rules leave
	// connections from it alone, so they are not captured again.
	PassthroughSourceIPv4 netip.Addr `json:"passthroughSourceIPv4"`
	// PassthroughSourceIPv6 is the same for IPv6. When it is not assigned
	// in the namespace the proxy connects without an explicit source.
	PassthroughSourceIPv6 netip.Addr `json:"passthroughSourceIPv6"`
}

// ServerConfig is the listen address of one of the proxy's HTTP servers.
type ServerConfig struct {
	// Address is the IP and port to listen on. An unspecified IP (0.0.0.0
	// or ::) listens on every address, IPv4 and IPv6. Port 0 picks a free
	// port (tests).
	Address netip.AddrPort `json:"address"`
}

// Timeouts bound the life of connections.
type Timeouts struct {
	// Connect bounds dialing the original destination or the app; an
	// outbound connection's resilience destination may set its own
	// (resilience timeouts.connect).
	Connect Duration `json:"connect"`
	// Handshake bounds the start of a mesh connection: inbound on a port
	// with mTLS on, the wait for the client's first bytes and the TLS
	// handshake; outbound to the mesh, the TLS handshake.
	Handshake Duration `json:"handshake"`
	// Idle closes a connection when no byte has moved either way for
	// this long, and a pooled HTTP/2 mesh connection that has carried no
	// request for this long; an outbound connection's resilience
	// destination may set its own (resilience timeouts.idle).
	Idle Duration `json:"idle"`
	// DrainGrace is how long in-flight connections may run after shutdown
	// starts (SIGTERM, /quitquitquit) before they are closed. 0 closes
	// them at once.
	DrainGrace Duration `json:"drainGrace"`
}

// MTLSConfig says which connections are mutual TLS between sidecars
// (shared/DESIGN.md §5, §6). The certificates themselves are not config:
// they come through WithMeshTLS (--cert-dir).
//
// Inbound, a mesh connection is recognised by its ClientHello offering
// an ALPN protocol "meshgate/..."; the proxy terminates the TLS and hands
// the app plaintext. Outbound, a connection to a destination in MeshCIDRs
// is sent as TLS 1.3 with ALPN "meshgate/tcp" to the destination's address,
// where the peer's rules deliver it to its sidecar.
type MTLSConfig struct {
	// Mode is what inbound connections must be, and whether outbound ones
	// to the mesh are mTLS:
	//   - strict: inbound takes mesh mTLS only; anything else is reset.
	//   - permissive: inbound takes mesh mTLS and plaintext both, for
	//     clients without a sidecar (while a namespace migrates).
	//   - disable: no mTLS either way: inbound bytes go to the app as they
	//     come, outbound connections are plaintext, to the mesh too.
	// Outbound is the same in strict and permissive: mTLS to MeshCIDRs.
	//
	// Unset (the default) means strict when the proxy has certificates
	// (WithMeshTLS; --cert-dir) and disable when it has none: giving a
	// sidecar an identity turns mTLS on, and only a visible choice
	// (permissive) lets plaintext in. strict or permissive without
	// certificates is an error at New. /config shows the mode in effect.
	Mode MTLSMode `json:"mode"`
	// PortModes overrides Mode for inbound connections to the listed app
	// ports (the original destination port), e.g. {8080: permissive}.
	PortModes map[uint16]MTLSMode `json:"portModes"`
	// MeshCIDRs are the destinations that run a meshgate sidecar:
	// outbound connections to them are mTLS. Empty: none but
	// Destinations (until discovery feeds it, --mesh-cidrs or this list
	// says which).
	MeshCIDRs []netip.Prefix `json:"meshCIDRs"`
	// PlaintextOutsideMesh allows outbound connections to destinations
	// outside MeshCIDRs, in plaintext, as without a mesh. It defaults to
	// true: a sidecar carries every outbound connection of its app,
	// including those to databases, cloud APIs and the internet, which
	// have no sidecar and cannot speak mesh mTLS, so refusing them by
	// default would break apps on enrollment; the app's own TLS to them
	// still passes through untouched. false refuses them (a reset,
	// logged and counted), for namespaces that must talk to the mesh
	// only.
	PlaintextOutsideMesh bool `json:"plaintextOutsideMesh"`
	// Destinations pin the SPIFFE ID that the server at a mesh
	// destination must present; the most specific CIDR wins. A listed
	// CIDR is in the mesh whether MeshCIDRs covers it or not. A mesh
	// destination not listed must present an identity of the proxy's own
	// trust domain.
	Destinations []MTLSDestination `json:"destinations"`
	// GreetingHold matters in permissive mode only. There the proxy
	// connects to the app while it waits for the client's first bytes, so
	// that an app that speaks first (MySQL, SMTP: server-first protocols)
	// is heard at once and its greeting passed on to a plaintext client,
	// which says nothing until greeted. A client sidecar, though, always
	// speaks first, and its ClientHello may still be on the wire when the
	// app greets: the greeting is held back this long after the client
	// connected, in case a ClientHello arrives, so that a mesh client is
	// not answered in plaintext. It adds at most this much to a plaintext
	// client's first greeting, and nothing to anything else. 0 passes the
	// greeting on at once. An app's HTTP/2 SETTINGS is no greeting of a
	// server-first protocol: it is held until the client has spoken.
	GreetingHold Duration `json:"greetingHold"`
}

// MTLSDestination pins the identity of the sidecars at a mesh
// destination.
type MTLSDestination struct {
	// CIDR is the destination addresses, e.g. 10.1.2.0/24 or 10.1.2.3/32.
	CIDR netip.Prefix `json:"cidr"`
	// Identity is the SPIFFE ID the server there must present, e.g.
	// spiffe://cluster.local/ns/shop/sa/payments.
	Identity spiffeid.ID `json:"identity"`
}

// MTLSMode is what inbound connections must be, see MTLSConfig.Mode.
type MTLSMode string

// The mTLS modes.
const (
	MTLSStrict     MTLSMode = "strict"
	MTLSPermissive MTLSMode = "permissive"
	MTLSDisable    MTLSMode = "disable"
)

// valid reports whether m is one of the modes (unset is not).
func (m MTLSMode) valid() bool {
	return m == MTLSStrict || m == MTLSPermissive || m == MTLSDisable
}

// DefaultConfig returns the configuration of shared/DESIGN.md §3, which
// the proxy runs on when no file is given. A config file overrides it
// field by field.
func DefaultConfig() Config {
	return Config{
		Mode:     intercept.ModeRedirect,
		LogLevel: "info",
		Mark:     Mark(intercept.ProxyMark),
		Outbound: OutboundConfig{Port: intercept.OutboundPort},
		Inbound: InboundConfig{
			Port:                  intercept.InboundPort,
			PassthroughSourceIPv4: netip.AddrFrom4([4]byte{127, 0, 0, 6}),
			PassthroughSourceIPv6: netip.MustParseAddr("::6"),
		},
		Admin:   ServerConfig{Address: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), intercept.AdminPort)},
		Metrics: ServerConfig{Address: netip.AddrPortFrom(netip.IPv4Unspecified(), intercept.MetricsPort)},
		Health:  ServerConfig{Address: netip.AddrPortFrom(netip.IPv4Unspecified(), intercept.HealthPort)},
		Timeouts: Timeouts{
			Connect:    Duration(10 * time.Second),
			Handshake:  Duration(10 * time.Second),
			Idle:       Duration(time.Hour),
			DrainGrace: Duration(5 * time.Second),
		},
		MTLS: MTLSConfig{
			PlaintextOutsideMesh: true,
			GreetingHold:         Duration(10 * time.Millisecond),
		},
		Protocols: ProtocolsConfig{
			DetectTimeout:     Duration(time.Second),
			Ports:             defaultPortProtocols(),
			ServerFirstMemory: Duration(10 * time.Minute),
			L7:                true,
		},
		LoadBalancing: LoadBalancingConfig{
			Policy:          PolicyP2CPeakEWMA,
			Decay:           Duration(10 * time.Second),
			ConnectAttempts: 3,
			OutlierDetection: OutlierDetectionConfig{
				ConsecutiveFailures: 5,
				BaseEjectionTime:    Duration(30 * time.Second),
				MaxEjectionTime:     Duration(5 * time.Minute),
				MaxEjectionPercent:  50,
			},
		},
		Limits: defaultLimits(),
	}
}

func defaultPortProtocols() map[uint16]PortProtocol {
	m := make(map[uint16]PortProtocol, len(DefaultOpaquePorts))
	for _, p := range DefaultOpaquePorts {
		m[p] = PortOpaque
	}
	return m
}

// LoadConfig reads the YAML file at path over DefaultConfig and validates
// the result. Unknown fields are errors; all validation problems are
// reported together, one per line.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("proxy: read config: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("proxy: config %s: %w", path, err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("proxy: config %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig parses YAML over DefaultConfig, strictly: unknown and
// duplicate fields are errors. Every field that is unknown or cannot be
// read is reported, each with its path. It does not validate.
func ParseConfig(data []byte) (Config, error) {
	// confval.Read names every unknown field and every unreadable value
	// with its path before it decodes anything, and reads keys YAML 1.1
	// takes for booleans (resilience's retries.on) as written.
	cfg := DefaultConfig()
	if err := confval.Read(data, &cfg); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Validate reports every problem of c at once (errors.Join, one per line),
// each naming the field and the fix.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if !c.Mode.Valid() {
		bad("mode: %q is not a mode; want redirect or tproxy", string(c.Mode))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("logLevel: %q is not a level; want debug, info, warn or error", c.LogLevel)
	}

	if !c.Inbound.PassthroughSourceIPv4.Is4() {
		bad("inbound.passthroughSourceIPv4: want an IPv4 address, e.g. 127.0.0.6")
	}
	if a := c.Inbound.PassthroughSourceIPv6; !a.Is6() || a.Is4In6() {
		bad("inbound.passthroughSourceIPv6: want an IPv6 address, e.g. ::6")
	}

	// Ports: each server needs its own (they all share the wildcard
	// addresses), and an address must be given.
	type portUse struct {
		field string
		port  uint16
	}
	uses := []portUse{{"outbound.port", c.Outbound.Port}, {"inbound.port", c.Inbound.Port}}
	for _, s := range []struct {
		field string
		addr  netip.AddrPort
		eg    string
	}{
		{"admin.address", c.Admin.Address, "127.0.0.1:15000"},
		{"metrics.address", c.Metrics.Address, "0.0.0.0:15020"},
		{"health.address", c.Health.Address, "0.0.0.0:15021"},
	} {
		if !s.addr.IsValid() {
			bad("%s: want an IP:port address, e.g. %s", s.field, s.eg)
			continue
		}
		uses = append(uses, portUse{s.field, s.addr.Port()})
	}
	for i, u := range uses {
		for _, prev := range uses[:i] {
			if u.port != 0 && u.port == prev.port {
				bad("%s: port %d is also %s; give each listener its own port", u.field, u.port, prev.field)
				break
			}
		}
	}

	if c.Timeouts.Connect <= 0 {
		bad("timeouts.connect: must be > 0, e.g. 5s")
	}
	if c.Timeouts.Handshake <= 0 {
		bad("timeouts.handshake: must be > 0, e.g. 10s")
	}
	if c.Timeouts.Idle <= 0 {
		bad("timeouts.idle: must be > 0, e.g. 1h")
	}
	if c.Timeouts.DrainGrace < 0 {
		bad("timeouts.drainGrace: must be >= 0, e.g. 5s")
	}
	errs = append(errs, c.MTLS.validate()...)
	errs = append(errs, c.Protocols.validate()...)
	errs = append(errs, c.LoadBalancing.validate()...)
	errs = append(errs, c.Policy.validate()...)
	errs = append(errs, c.Access.validate(c.Protocols)...)
	errs = append(errs, c.validateRateLimits()...)
	errs = append(errs, c.Limits.validate()...)
	if err := resilience.Validate(c.Resilience); err != nil {
		errs = append(errs, splitJoined(err)...)
	}
	// A rule with HTTP conditions on a port whose connections are never
	// HTTP would silently never allow (or always deny): say so.
	for i, r := range c.Policy.Rules {
		if r.HTTP == nil && r.JWT == nil {
			continue
		}
		for j, port := range r.Ports {
			if c.Protocols.Ports[port] == PortOpaque {
				bad("policy.rules[%d].ports[%d]: port %d is declared opaque (protocols.ports; the default for well-known "+
					"binary protocols), so no connection to it is HTTP and the rule's http and jwt conditions can never be checked; "+
					"declare the port detect or http, or give the rule no http or jwt conditions", i, j, port)
			}
		}
	}
	return errors.Join(errs...)
}

// validate reports the problems of the loadBalancing section.
func (c LoadBalancingConfig) validate() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch c.Policy {
	case PolicyP2CPeakEWMA, PolicyRoundRobin, PolicyLeastRequest:
	default:
		bad("loadBalancing.policy: %q is not a policy; want %s, %s or %s", c.Policy, PolicyP2CPeakEWMA, PolicyRoundRobin, PolicyLeastRequest)
	}
	if c.Decay <= 0 {
		bad("loadBalancing.decay: must be > 0, e.g. 10s")
	}
	if c.ConnectAttempts < 1 {
		bad("loadBalancing.connectAttempts: must be 1 or more, e.g. 3")
	}
	o := c.OutlierDetection
	if o.ConsecutiveFailures < 0 {
		bad("loadBalancing.outlierDetection.consecutiveFailures: must be >= 0 (0: no ejection), e.g. 5")
	}
	if o.BaseEjectionTime <= 0 {
		bad("loadBalancing.outlierDetection.baseEjectionTime: must be > 0, e.g. 30s")
	}
	if o.MaxEjectionTime < o.BaseEjectionTime {
		bad("loadBalancing.outlierDetection.maxEjectionTime: must be >= baseEjectionTime (%v), e.g. 5m", o.BaseEjectionTime.D())
	}
	if o.MaxEjectionPercent < 1 || o.MaxEjectionPercent > 100 {
		bad("loadBalancing.outlierDetection.maxEjectionPercent: must be 1 to 100, e.g. 50")
	}
	return errs
}

// validate reports the problems of the protocols section.
func (c ProtocolsConfig) validate() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.DetectTimeout <= 0 {
		bad("protocols.detectTimeout: must be > 0, e.g. 1s")
	}
	for _, port := range slices.Sorted(maps.Keys(c.Ports)) {
		switch pp := c.Ports[port]; {
		case port == 0:
			bad("protocols.ports.0: 0 is not a port; want a number from 1 to 65535")
		case pp != PortOpaque && pp != PortDetect && pp != PortHTTP:
			bad("protocols.ports.%d: %q is not a declaration; want opaque, detect or http", port, string(pp))
		}
	}
	if c.ServerFirstMemory < 0 {
		bad("protocols.destMemory: must be >= 0, e.g. 10m")
	}
	return errs
}

// validate reports the problems of the mtls section. Whether the modes
// have the certificates they need is New's to check: certificates are
// not config.
func (c MTLSConfig) validate() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if c.Mode != "" && !c.Mode.valid() {
		bad("mtls.mode: %q is not a mode; want strict, permissive or disable, or leave it unset", string(c.Mode))
	}
	for _, port := range slices.Sorted(maps.Keys(c.PortModes)) {
		switch m := c.PortModes[port]; {
		case port == 0:
			bad("mtls.portModes.0: 0 is not a port; want a number from 1 to 65535")
		case !m.valid():
			bad("mtls.portModes.%d: %q is not a mode; want strict, permissive or disable", port, string(m))
		}
	}

	checkPrefix := func(field string, p netip.Prefix) bool {
		if err := netlist.CheckPrefix(p); err != nil {
			bad("%s: %v", field, err)
			return false
		}
		return true
	}
	seen := map[netip.Prefix]string{}
	for i, p := range c.MeshCIDRs {
		field := fmt.Sprintf("mtls.meshCIDRs[%d]", i)
		if !checkPrefix(field, p) {
			continue
		}
		if prev, ok := seen[p]; ok {
			bad("%s: %s is also %s; list it once", field, p, prev)
			continue
		}
		seen[p] = field
	}
	clear(seen)
	for i, d := range c.Destinations {
		field := fmt.Sprintf("mtls.destinations[%d]", i)
		if checkPrefix(field+".cidr", d.CIDR) {
			if prev, ok := seen[d.CIDR]; ok {
				bad("%s.cidr: %s is also %s.cidr; give each CIDR one identity", field, d.CIDR, prev)
			}
			seen[d.CIDR] = field
		}
		if d.Identity.IsZero() {
			bad("%s.identity: want a SPIFFE ID, e.g. spiffe://cluster.local/ns/default/sa/web", field)
		}
	}
	if c.GreetingHold < 0 {
		bad("mtls.greetingHold: must be >= 0, e.g. 10ms")
	}
	return errs
}

// Duration is a time.Duration written as a Go duration string, "5s",
// "1m30s", "1h"; a bare number is refused.
type Duration = confval.Duration

// Mark is a socket mark (SO_MARK). In YAML it may be written as a number
// (1337, 0x539) or a string ("0x539"); it is printed in hex.
type Mark uint32

// String formats m in hex, as iptables prints marks.
func (m Mark) String() string { return "0x" + strconv.FormatUint(uint64(m), 16) }

// MarshalJSON writes m as a hex string.
func (m Mark) MarshalJSON() ([]byte, error) { return json.Marshal(m.String()) }

// UnmarshalJSON reads a number or a string in decimal, 0x hex or 0o octal.
func (m *Mark) UnmarshalJSON(b []byte) error {
	s := string(b)
	if uq, err := strconv.Unquote(s); err == nil {
		s = uq
	}
	v, err := strconv.ParseUint(strings.TrimSpace(s), 0, 32)
	if err != nil {
		return confval.Errorf("%s is not a mark; want a 32-bit number, e.g. 0x539 or 1337", b)
	}
	*m = Mark(v)
	return nil
}
