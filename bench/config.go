package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"
)

// Protocol is what the load speaks.
type Protocol string

// The protocols.
const (
	HTTP1 Protocol = "http1" // HTTP/1.1, POST of the body to the target URL
	H2C   Protocol = "h2c"   // HTTP/2 without TLS, prior knowledge, one connection per Config.Connections
	H2    Protocol = "h2"    // HTTP/2 over TLS (ALPN h2), to an https:// target
	GRPC  Protocol = "grpc"  // gRPC unary call of Serve's echo method, over h2c
	TCP   Protocol = "tcp"   // raw TCP: write the body, read it back (Serve's echo)
)

// Config is one load run.
type Config struct {
	// Protocol is http1 (the default), h2c, h2, grpc or tcp.
	Protocol Protocol
	// Target is a URL for http1 (http:// or https://), h2c (http://) and
	// h2 (https://), and host:port for grpc and tcp.
	Target string
	// Insecure skips verifying the target's TLS certificate (https://
	// targets), as for Serve's self-signed one.
	Insecure bool
	// Rate is the requests per second of a fixed-rate run, all
	// connections together; 0 runs as fast as possible.
	Rate float64
	// Connections is how many connections carry the load (workers, each
	// with one request in flight); 0 means 16.
	Connections int
	// Duration is how long requests are measured; 0 means 10s. Warmup runs
	// the same load before, unmeasured.
	Duration, Warmup time.Duration
	// BodySize is the request body in bytes, echoed back by Serve; 0 sends
	// none.
	BodySize int
	// NewConnection opens a new connection for every request instead of
	// keeping one per worker.
	NewConnection bool
	// Timeout bounds a request; 0 means 10s.
	Timeout time.Duration
	// Dial connects to the target; nil uses a net.Dialer. Mesh passes one
	// that dials inside a network namespace.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// withDefaults fills the zero fields.
func (c Config) withDefaults() Config {
	if c.Protocol == "" {
		c.Protocol = HTTP1
	}
	if c.Connections == 0 {
		c.Connections = 16
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Dial == nil {
		var d net.Dialer
		c.Dial = d.DialContext
	}
	return c
}

// Validate reports every problem of c at once, each naming its field as
// the command line spells it.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch c.Protocol {
	case HTTP1, H2C, H2:
		want := map[Protocol]string{HTTP1: "http", H2C: "http", H2: "https"}[c.Protocol]
		u, err := url.Parse(c.Target)
		switch {
		case err != nil || u.Host == "":
			bad("target %q: want a URL for protocol %s, e.g. %s://10.0.0.2:8080/", c.Target, c.Protocol, want)
		case c.Protocol == HTTP1 && (u.Scheme == "http" || u.Scheme == "https"):
		case u.Scheme != want:
			bad("target %q: want a %s:// URL for protocol %s, e.g. %s://10.0.0.2:8443/", c.Target, want, c.Protocol, want)
		}
	case GRPC, TCP:
		if _, port, err := net.SplitHostPort(c.Target); err != nil || port == "" {
			bad("target %q: want host:port for protocol %s, e.g. 10.0.0.2:9000", c.Target, c.Protocol)
		}
	default:
		bad("--protocol %q: want http1, h2c, h2, grpc or tcp", c.Protocol)
	}
	if c.Rate < 0 {
		bad("--rate %v: want requests per second, or 0 for as fast as possible", c.Rate)
	}
	if c.Connections < 1 || c.Connections > 10000 {
		bad("--connections %d: want 1 to 10000", c.Connections)
	}
	if c.Duration <= 0 {
		bad("--duration %s: want a positive duration, e.g. 10s", c.Duration)
	}
	if c.Warmup < 0 {
		bad("--warmup %s: want 0 or more", c.Warmup)
	}
	if c.BodySize < 0 || c.BodySize > 64<<20 {
		bad("--body %d: want 0 to 67108864 bytes", c.BodySize)
	}
	if c.Protocol == TCP && c.BodySize == 0 {
		bad("--body 0: a TCP echo needs bytes to echo; give --body 1024, say")
	}
	if c.Timeout <= 0 {
		bad("--timeout %s: want a positive duration", c.Timeout)
	}
	return errors.Join(errs...)
}
