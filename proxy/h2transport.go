package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// newMeshTransport returns the HTTP/2 path's transport to peer sidecars
// (see l7): it dials an endpoint and originates mesh TLS for meshgate/h2.
func (p *Proxy) newMeshTransport() *http2.Transport {
	return &http2.Transport{
		DialTLSContext: func(ctx context.Context, _, addr string, _ *tls.Config) (net.Conn, error) {
			dst, err := netip.ParseAddrPort(addr)
			if err != nil {
				return nil, err
			}
			conn, info, err := p.dialEndpoint(ctx, dst, dst, alpnH2)
			if err != nil {
				return nil, err
			}
			return &meshHTTPConn{Conn: conn.tls, p: p, tcp: conn.tcp, info: info}, nil
		},
		DisableCompression: true,
		MaxHeaderListSize:  maxHeaderBytes + 64<<10,
		ReadIdleTimeout:    30 * time.Second,
		PingTimeout:        15 * time.Second,
	}
}

// meshHTTPConn is a pooled upstream connection: closing it deregisters it
// from the loop guard.
type meshHTTPConn struct {
	net.Conn
	p    *Proxy
	tcp  *net.TCPConn
	info tlsInfo
	once sync.Once
}

func (c *meshHTTPConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.p.closeUpstream(c.tcp) })
	return err
}

// CloseWrite half-closes the connection, so that a protocol switched to
// (ReverseProxy copies an upgraded connection) keeps TCP half-close.
func (c *meshHTTPConn) CloseWrite() error { return closeWrite(c.Conn) }

// newAppTransport returns transports to the local app whose connections
// are dialed from from (see dialApp).
func (p *Proxy) newAppTransport(from netip.Addr) appTransport {
	dialApp := func(ctx context.Context, addr string) (net.Conn, error) {
		dst, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, err
		}
		c, err := p.dialApp(ctx, from, dst)
		if err != nil {
			return nil, &dialError{err}
		}
		return &meshHTTPConn{Conn: c, p: p, tcp: c}, nil
	}
	return appTransport{
		h1: &http.Transport{
			DialContext:            func(ctx context.Context, _, addr string) (net.Conn, error) { return dialApp(ctx, addr) },
			DisableCompression:     true,
			MaxIdleConnsPerHost:    64,
			IdleConnTimeout:        90 * time.Second,
			MaxResponseHeaderBytes: maxHeaderBytes,
		},
		h2c: &http2.Transport{
			AllowHTTP:          true,
			DialTLSContext:     func(ctx context.Context, _, addr string, _ *tls.Config) (net.Conn, error) { return dialApp(ctx, addr) },
			DisableCompression: true,
			MaxHeaderListSize:  maxHeaderBytes + 64<<10,
			IdleConnTimeout:    90 * time.Second,
		},
	}
}

// appTransport sends a request to the local app in the protocol named by
// hdrAppProtocol (which it removes): HTTP/1.1, or h2c.
type appTransport struct {
	h1  *http.Transport
	h2c *http2.Transport
}

func (t appTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	proto := r.Header.Get(hdrAppProtocol)
	r.Header.Del(hdrAppProtocol)
	if proto == "http2" {
		return t.h2c.RoundTrip(r)
	}
	return t.h1.RoundTrip(r)
}

// closeIdle closes the app connections no request uses.
func (t appTransport) closeIdle() {
	t.h1.CloseIdleConnections()
	t.h2c.CloseIdleConnections()
}

// balancedTransport sends each L7 request to an endpoint of its
// destination that the balancer picks, over the pooled mesh connections
// to that endpoint; a request that could not be sent (connect or
// handshake failure) is tried on another endpoint.
type balancedTransport struct {
	p   *Proxy
	dst netip.AddrPort
}

// outboundKey is the context key of a request's *outboundRequest.
type outboundKey struct{}

func (t balancedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	var resp *http.Response
	st, _ := r.Context().Value(outboundKey{}).(*outboundRequest)
	err := t.p.eachEndpoint(r.Context(), t.dst, func(tr *try) error {
		// One trace per try, and only when someone listens: the request's
		// peer sidecar (st) and the balancer's set-up time. The pooled
		// transport dials and runs the mesh handshake, when it has no
		// connection to the endpoint, before GotConn: set-up, which the
		// balancer does not count as the endpoint's latency.
		out := r
		switch {
		case st != nil && st.traced:
			st.try = tr // the request's own trace notes its connection
		case st != nil || tr.done != nil:
			out = r.WithContext(httptrace.WithClientTrace(r.Context(), &httptrace.ClientTrace{
				GotConn: func(c httptrace.GotConnInfo) {
					if mc, ok := c.Conn.(*meshHTTPConn); ok && st != nil {
						st.peer = mc.info
					}
					if st != nil {
						st.guard.connected()
					}
					if tr.done != nil {
						if tr.connected = time.Now(); c.Reused {
							tr.connected = tr.start
						}
					}
				},
			}))
		}
		// r is the proxy's own copy of the app's request (ReverseProxy's,
		// or h2Proxy's), so a shallow copy will do: the transport changes neither its header nor its
		// URL. The URL is copied only when the balancer picked an endpoint
		// other than the destination, which Rewrite already set.
		if tr.addr != t.dst {
			if out == r {
				out = r.WithContext(r.Context())
			}
			u := *r.URL
			u.Host = tr.addr.String()
			out.URL = &u
		}
		if tr.done != nil && r.Body != nil && r.Body != http.NoBody {
			// The transport closes the body when the try fails; another
			// try needs it (unread: a try that failed to connect read
			// nothing). The server closes it once the handler is done.
			// Unbalanced, there is no other try.
			if out == r {
				out = r.WithContext(r.Context())
			}
			out.Body = io.NopCloser(r.Body)
		}
		var err error
		if resp, err = t.p.l7.mesh.RoundTrip(out); err != nil {
			return err
		}
		if tr.done != nil {
			if tr.connected.IsZero() {
				tr.connected = tr.start // no trace of the connection: all latency
			}
			setup, latency := tr.spent(time.Now())
			failed := resp.StatusCode == http.StatusBadGateway || resp.StatusCode == http.StatusServiceUnavailable ||
				resp.StatusCode == http.StatusGatewayTimeout
			resp.Body = &doneBody{ReadCloser: resp.Body, done: func() { tr.report(setup, latency, failed) }}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// doneBody reports a request's try when its response body is closed (the
// request is in flight until then, for least-request).
type doneBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *doneBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}
