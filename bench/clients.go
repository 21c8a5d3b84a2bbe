package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// client is one worker's connection to the target: do sends one request
// and waits for its whole answer.
type client interface {
	do(ctx context.Context) error
	close()
}

func newClient(cfg Config) (client, error) {
	body := bytes.Repeat([]byte{'m'}, cfg.BodySize)
	switch cfg.Protocol {
	case HTTP1:
		tr := &http.Transport{
			DialContext:         cfg.Dial,
			TLSClientConfig:     &tls.Config{InsecureSkipVerify: cfg.Insecure, NextProtos: []string{"http/1.1"}},
			MaxConnsPerHost:     1,
			MaxIdleConnsPerHost: 1,
			DisableKeepAlives:   cfg.NewConnection,
			DisableCompression:  true,
		}
		return &httpClient{rt: tr, closeIdle: tr.CloseIdleConnections, url: cfg.Target, body: body}, nil
	case H2C:
		tr := &http2.Transport{
			AllowHTTP: true,
			DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
				return cfg.Dial(ctx, network, addr)
			},
			DisableCompression: true,
		}
		c := &httpClient{rt: tr, closeIdle: tr.CloseIdleConnections, url: cfg.Target, body: body}
		if cfg.NewConnection {
			c.afterEach = tr.CloseIdleConnections
		}
		return c, nil
	case H2:
		tr := &http2.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: cfg.Insecure},
			DialTLSContext: func(ctx context.Context, network, addr string, tc *tls.Config) (net.Conn, error) {
				raw, err := cfg.Dial(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				c := tls.Client(raw, tc)
				if err := c.HandshakeContext(ctx); err != nil {
					raw.Close()
					return nil, err
				}
				return c, nil
			},
			DisableCompression: true,
		}
		c := &httpClient{rt: tr, closeIdle: tr.CloseIdleConnections, url: cfg.Target, body: body}
		if cfg.NewConnection {
			c.afterEach = tr.CloseIdleConnections
		}
		return c, nil
	case GRPC:
		return &grpcClient{cfg: cfg, body: body}, nil
	case TCP:
		return &tcpClient{cfg: cfg, body: body, buf: make([]byte, len(body))}, nil
	}
	return nil, fmt.Errorf("protocol %q", cfg.Protocol)
}

// httpClient POSTs the body (GET without one) and reads the answer.
type httpClient struct {
	rt        http.RoundTripper
	closeIdle func()
	afterEach func() // a new connection per request, HTTP/2
	url       string
	body      []byte
}

func (c *httpClient) do(ctx context.Context) error {
	method := http.MethodGet
	var body io.Reader
	if len(c.body) > 0 {
		method, body = http.MethodPost, bytes.NewReader(c.body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url, body)
	if err != nil {
		return err
	}
	resp, err := c.rt.RoundTrip(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if c.afterEach != nil {
		c.afterEach()
	}
	if err != nil {
		return err
	}
	if resp.StatusCode >= 400 {
		return &statusError{kind: "status_" + strconv.Itoa(resp.StatusCode/100) + "xx"}
	}
	return nil
}

func (c *httpClient) close() { c.closeIdle() }

// tcpClient writes the body and reads as many bytes back.
type tcpClient struct {
	cfg  Config
	body []byte
	buf  []byte
	conn net.Conn
}

func (c *tcpClient) do(ctx context.Context) error {
	if c.conn == nil {
		conn, err := c.cfg.Dial(ctx, "tcp", c.cfg.Target)
		if err != nil {
			return err
		}
		c.conn = conn
	}
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetDeadline(dl)
	}
	_, err := c.conn.Write(c.body)
	if err == nil {
		_, err = io.ReadFull(c.conn, c.buf)
	}
	if err != nil || c.cfg.NewConnection {
		c.conn.Close()
		c.conn = nil
	}
	return err
}

func (c *tcpClient) close() {
	if c.conn != nil {
		c.conn.Close()
	}
}

// grpcClient calls Serve's echo method: the body goes out as the request
// message and comes back as the answer.
type grpcClient struct {
	cfg  Config
	body []byte
	cc   *grpc.ClientConn
}

func (c *grpcClient) do(ctx context.Context) error {
	if c.cc == nil {
		cc, err := grpc.NewClient("passthrough:///"+c.cfg.Target,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return c.cfg.Dial(ctx, "tcp", addr) }),
			grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})))
		if err != nil {
			return err
		}
		c.cc = cc
	}
	var out []byte
	err := c.cc.Invoke(ctx, echoMethod, c.body, &out)
	if c.cfg.NewConnection {
		c.cc.Close()
		c.cc = nil
	}
	if err != nil {
		return grpcError(err)
	}
	if len(out) != len(c.body) {
		return &statusError{kind: "grpc_short_answer"}
	}
	return nil
}

func (c *grpcClient) close() {
	if c.cc != nil {
		c.cc.Close()
	}
}
