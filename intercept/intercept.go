package intercept

// The ports of shared/DESIGN.md §3.
const (
	// OutboundPort receives the app's outbound TCP connections.
	OutboundPort uint16 = 15001
	// InboundPort receives inbound TCP connections (plaintext or mesh mTLS).
	InboundPort uint16 = 15006
	// TunnelPort is the mesh tunnel between sidecars.
	TunnelPort uint16 = 15008
	// DNSPort receives captured DNS queries, UDP and TCP, on loopback.
	DNSPort uint16 = 15053
	// AdminPort is the proxy's admin server, on loopback.
	AdminPort uint16 = 15000
	// MetricsPort serves Prometheus /metrics.
	MetricsPort uint16 = 15020
	// HealthPort serves /healthz/ready and /healthz/live.
	HealthPort uint16 = 15021
)

// The exemptions of the proxy's own traffic: either alone keeps the
// proxy from capturing itself.
const (
	// ProxyMark is the SO_MARK on every socket of the proxy; packets
	// carrying it are never captured.
	ProxyMark uint32 = 0x539
	// ProxyUID is the UID the proxy runs as by default; its traffic is
	// never captured.
	ProxyUID uint32 = 1337
)

// Mode is how the rules deliver inbound connections to the proxy.
// Outbound capture is REDIRECT in both modes.
type Mode string

const (
	// ModeRedirect uses nat REDIRECT: the original destination comes from
	// SO_ORIGINAL_DST, and the app sees connections from 127.0.0.6.
	ModeRedirect Mode = "redirect"
	// ModeTProxy uses mangle TPROXY and policy routing: the inbound
	// listener is IP_TRANSPARENT, the original destination is the accepted
	// socket's local address, and the proxy can connect to the app from
	// the client's own address.
	ModeTProxy Mode = "tproxy"
)

// Valid reports whether m is one of the modes.
func (m Mode) Valid() bool { return m == ModeRedirect || m == ModeTProxy }
