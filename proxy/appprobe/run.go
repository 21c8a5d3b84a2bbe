package appprobe

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// userAgent is sent with HTTP probes that do not set their own, as
// kubelet sends kube-probe/<version>.
const userAgent = "meshgate-probe/1"

// Runner runs app probes. Every connection it makes to the app goes
// through Control (the proxy's socket marking), so the capture rules let
// it by.
type Runner struct {
	dialer    net.Dialer
	transport *http.Transport
}

// NewRunner returns a Runner whose sockets pass through control before
// they connect (nil: none).
func NewRunner(control func(network, address string, c syscall.RawConn) error) *Runner {
	r := &Runner{dialer: net.Dialer{Control: control, KeepAlive: -1}}
	r.transport = &http.Transport{
		Proxy:             nil, // the app is in the pod: never through an HTTP proxy
		DialContext:       r.dialer.DialContext,
		DisableKeepAlives: true, // a probe is one request, as kubelet's
		// kubelet does not verify the app's certificate either: the
		// probe asks whether it serves, not who it is.
		TLSClientConfig:    &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // as kubelet
		DisableCompression: true,
	}
	return r
}

// Close releases the Runner's idle resources.
func (r *Runner) Close() { r.transport.CloseIdleConnections() }

// deadline is how long a probe may run: its timeout less a little, so the
// answer (with its reason) reaches kubelet before kubelet's own timeout,
// which is the same number of seconds, gives up on the rewritten probe.
func deadline(timeout time.Duration) time.Duration {
	return timeout - min(100*time.Millisecond, timeout/10)
}

// Check runs p once against the app and returns nil when it passes, or why
// it failed.
func (r *Runner) Check(ctx context.Context, p Probe) error {
	ctx, cancel := context.WithTimeout(ctx, deadline(p.Timeout()))
	defer cancel()
	var err error
	switch {
	case p.HTTPGet != nil:
		err = r.checkHTTP(ctx, p.HTTPGet)
	case p.GRPC != nil:
		err = r.checkGRPC(ctx, p.GRPC)
	case p.TCPSocket != nil:
		err = r.checkTCP(ctx, p.TCPSocket)
	default:
		err = errors.New("no handler")
	}
	if err != nil && (errors.Is(err, context.DeadlineExceeded) || isTimeout(err)) {
		return fmt.Errorf("%w (no answer within the probe's timeout, %s)", err, p.Timeout())
	}
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func addr(host string, port int) string {
	if host == "" {
		host = DefaultHost
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

func (r *Runner) checkHTTP(ctx context.Context, g *HTTPGet) error {
	scheme := "http"
	if g.Scheme == "HTTPS" {
		scheme = "https"
	}
	p := g.Path
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	url := scheme + "://" + addr(g.Host, g.Port) + p
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("Accept", "*/*")
	for _, h := range g.HTTPHeaders {
		if strings.EqualFold(h.Name, "Host") {
			req.Host = h.Value
			continue
		}
		req.Header.Add(h.Name, h.Value)
	}
	// A redirect is an answer (kubelet counts 3xx a success too); it is
	// not followed.
	client := &http.Client{Transport: r.transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		var ue interface{ Unwrap() error }
		if errors.As(err, &ue) {
			err = ue.Unwrap() // the url.Error's cause: the URL is said below
		}
		return fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	io.CopyN(io.Discard, resp.Body, 10<<10)
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("GET %s: status %s", url, resp.Status)
	}
	return nil
}

func (r *Runner) checkGRPC(ctx context.Context, g *GRPC) error {
	target := addr("", g.Port)
	conn, err := grpc.NewClient("passthrough:///"+target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUserAgent(userAgent),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			return r.dialer.DialContext(ctx, "tcp", a)
		}))
	if err != nil {
		return fmt.Errorf("gRPC health %s: %w", target, err)
	}
	defer conn.Close()
	req := &healthpb.HealthCheckRequest{}
	if g.Service != nil {
		req.Service = *g.Service
	}
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, req, grpc.WaitForReady(false))
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("gRPC health %s: %w", target, ctx.Err())
		}
		if s, ok := status.FromError(err); ok {
			return fmt.Errorf("gRPC health %s: %s: %s", target, s.Code(), s.Message())
		}
		return fmt.Errorf("gRPC health %s: %w", target, err)
	}
	if st := resp.GetStatus(); st != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("gRPC health %s service %q: %s", target, req.Service, st)
	}
	return nil
}

func (r *Runner) checkTCP(ctx context.Context, t *TCPSocket) error {
	a := addr(t.Host, t.Port)
	c, err := r.dialer.DialContext(ctx, "tcp", a)
	if err != nil {
		return fmt.Errorf("connect %s: %w", a, err)
	}
	c.Close()
	return nil
}

// Handler serves the paths of set: each request runs its probe and is
// answered 200, or 503 with the reason. Failures are logged at debug:
// kubelet reports them with the reason in the answer's body.
func Handler(set Set, r *Runner, log *zap.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		p, ok := set[req.URL.Path]
		if !ok {
			http.NotFound(w, req)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := r.Check(req.Context(), p); err != nil {
			log.Debug("app probe failed", zap.String("path", req.URL.Path), zap.String("probe", p.Kind()), zap.Error(err))
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "app %s probe failed: %v\n", p.Kind(), err)
			return
		}
		fmt.Fprintf(w, "app %s probe passed\n", p.Kind())
	})
}
