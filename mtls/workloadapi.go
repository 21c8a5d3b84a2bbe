package mtls

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"meshgate/sockmark"
)

// WorkloadAPISource is a Source fed by the SPIFFE Workload API (a SPIRE
// agent, for one): the agent pushes a new certificate and bundles before
// the old ones expire, and the next handshake uses them. It is go-spiffe's
// X509Source; Close it when done.
type WorkloadAPISource struct {
	*workloadapi.X509Source
}

// NewWorkloadAPISource connects to the Workload API at addr
// ("unix:///run/spire/sockets/agent.sock", or "tcp://IP:PORT"; empty
// means the SPIFFE_ENDPOINT_SOCKET environment variable) and waits for the
// first certificate, until ctx is done. It keeps watching for updates,
// reconnecting with backoff, until Close. A TCP connection to the API
// carries the socket mark mark (0: none), so that capture rules exempting
// the sidecar's mark do not catch it; a unix socket is never captured.
// log gets go-spiffe's messages; nil logs nothing.
func NewWorkloadAPISource(ctx context.Context, addr string, mark uint32, log *zap.Logger) (*WorkloadAPISource, error) {
	if log == nil {
		log = zap.NewNop()
	}
	var opts []workloadapi.ClientOption
	if addr != "" {
		if err := workloadapi.ValidateAddress(addr); err != nil {
			return nil, &Error{Op: fmt.Sprintf("workload API address %q", addr), Err: err}
		}
		opts = append(opts, workloadapi.WithAddr(addr))
	} else if _, ok := workloadapi.GetDefaultAddress(); !ok {
		return nil, &Error{Op: "workload API", Err: fmt.Errorf("no address given and %s is not set", workloadapi.SocketEnv)}
	}
	if strings.HasPrefix(addrOrEnv(addr), "tcp:") {
		// gRPC hands the dialer the address as IP:port.
		d := &net.Dialer{Control: sockmark.Control(mark)}
		opts = append(opts, workloadapi.WithDialOptions(grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", a)
		})))
	}
	opts = append(opts, workloadapi.WithLogger(log.Named("workloadapi").Sugar()))
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(opts...))
	if err != nil {
		return nil, &Error{Op: "workload API " + addrOrEnv(addr), Err: err}
	}
	return &WorkloadAPISource{X509Source: src}, nil
}

// CurrentSVID returns the workload certificate in use, for metrics and
// logs, or nil once closed.
func (s *WorkloadAPISource) CurrentSVID() *x509svid.SVID {
	svid, err := s.GetX509SVID()
	if err != nil {
		return nil
	}
	return svid
}

func addrOrEnv(addr string) string {
	if addr == "" {
		a, _ := workloadapi.GetDefaultAddress()
		return a
	}
	return addr
}
