package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"meshgate/intercept"
)

// captureListener is one capture listener: a direction and a family.
type captureListener struct {
	dir  Direction
	ln   *net.TCPListener
	addr netip.AddrPort
}

// httpServer is one of the admin, metrics and health servers.
type httpServer struct {
	name string
	ln   net.Listener
	srv  *http.Server
}

// bindError is a listener that could not be bound, with a hint for the
// usual causes.
type bindError struct {
	what string // "outbound listener", "metrics server", ...
	addr string
	port uint16
	err  error
}

func (e *bindError) Error() string {
	switch {
	case errors.Is(e.err, syscall.EADDRINUSE):
		return fmt.Sprintf("proxy: %s %s: port %d already in use: is another sidecar running in this namespace?", e.what, e.addr, e.port)
	case errors.Is(e.err, syscall.EADDRNOTAVAIL):
		return fmt.Sprintf("proxy: %s %s: the address is not assigned in this network namespace; change it in the config", e.what, e.addr)
	case errors.Is(e.err, syscall.EACCES) && e.port < 1024:
		return fmt.Sprintf("proxy: %s %s: binding port %d needs CAP_NET_BIND_SERVICE; use a port above 1023", e.what, e.addr, e.port)
	}
	return fmt.Sprintf("proxy: %s %s: %v", e.what, e.addr, e.err)
}

func (e *bindError) Unwrap() error { return e.err }

// bind binds every listener, or none: on failure whatever was bound is
// closed again.
func (p *Proxy) bind() (capture []*captureListener, servers []*httpServer, err error) {
	defer func() {
		if err != nil {
			for _, l := range capture {
				l.ln.Close()
			}
			for _, s := range servers {
				s.ln.Close()
			}
			capture, servers = nil, nil
		}
	}()

	noV6, why := ipv6Disabled()
	for _, spec := range []struct {
		dir         Direction
		port        uint16
		transparent bool
	}{
		{Outbound, p.cfg.Outbound.Port, false},
		{Inbound, p.cfg.Inbound.Port, p.cfg.Mode == intercept.ModeTProxy},
	} {
		for _, network := range []string{"tcp4", "tcp6"} {
			if network == "tcp6" && noV6 {
				continue
			}
			host := "0.0.0.0"
			if network == "tcp6" {
				host = "::"
			}
			addr := net.JoinHostPort(host, strconv.Itoa(int(spec.port)))
			lc := net.ListenConfig{}
			if spec.dir == Outbound {
				// The app is on this host: its connections cannot vanish
				// unnoticed, so TCP keep-alive probes (four setsockopt
				// calls per accepted connection) would buy nothing.
				lc.KeepAlive = -1
			}
			if spec.transparent {
				lc.Control = transparentControl
			}
			ln, err := lc.Listen(context.Background(), network, addr)
			if err != nil {
				if network == "tcp6" && (errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EADDRNOTAVAIL)) {
					noV6, why = true, err.Error()
					continue
				}
				return capture, servers, &bindError{what: spec.dir.String() + " listener", addr: addr, port: spec.port, err: err}
			}
			tl := ln.(*net.TCPListener)
			ap := addrPort(tl.Addr())
			capture = append(capture, &captureListener{dir: spec.dir, ln: tl, addr: ap})
			if spec.dir == Outbound {
				p.addrs.Outbound = append(p.addrs.Outbound, ap)
			} else {
				p.addrs.Inbound = append(p.addrs.Inbound, ap)
			}
		}
	}
	if noV6 {
		p.log.Info("no IPv6 in this network namespace: capturing IPv4 only", zap.String("reason", why))
	}

	for _, spec := range []struct {
		name    string
		addr    netip.AddrPort
		handler http.Handler
		bound   *netip.AddrPort
	}{
		{"admin", p.cfg.Admin.Address, p.adminHandler(), &p.addrs.Admin},
		{"metrics", p.cfg.Metrics.Address, p.metricsHandler(), &p.addrs.Metrics},
		{"health", p.cfg.Health.Address, p.healthHandler(), &p.addrs.Health},
	} {
		// "tcp" on an unspecified address listens on both families
		// (dual-stack [::], or 0.0.0.0 without IPv6).
		ln, err := net.Listen("tcp", spec.addr.String())
		if err != nil {
			return capture, servers, &bindError{what: spec.name + " server", addr: spec.addr.String(), port: spec.addr.Port(), err: err}
		}
		*spec.bound = addrPort(ln.Addr())
		servers = append(servers, &httpServer{
			name: spec.name,
			ln:   ln,
			srv: &http.Server{
				Handler:           spec.handler,
				ReadHeaderTimeout: 10 * time.Second,
				ErrorLog:          zap.NewStdLog(p.log.Named(spec.name)),
			},
		})
	}
	return capture, servers, nil
}

// addrPort converts a TCP net.Addr, unmapping IPv4-in-IPv6.
func addrPort(a net.Addr) netip.AddrPort {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// acceptLoop accepts on l until it is closed, running one handler per
// connection on handlers, counted in conns until it returns.
func (p *Proxy) acceptLoop(ctx context.Context, l *captureListener, stop <-chan struct{}, handlers *handlerPool, conns *sync.WaitGroup) {
	var backoff time.Duration
	for {
		c, err := l.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off as net/http
			// does, rather than spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			p.log.Warn("accept failed; retrying", zap.Stringer("listener", l.addr), zap.Duration("backoff", backoff), zap.Error(err))
			select {
			case <-time.After(backoff):
			case <-stop:
				return
			}
			continue
		}
		backoff = 0
		if p.refusedAtAccept(l, c) {
			continue
		}
		// Over a connection cap: reset at once, on this goroutine, before
		// anything is read (protect.go).
		src := addrPort(c.RemoteAddr())
		if !p.protect.admit(l.dir, src) {
			reset(c)
			continue
		}
		if !p.track(c) {
			p.protect.leave(l.dir, c, src)
			reset(c)
			continue
		}
		conns.Add(1)
		handlers.run(func() {
			p.handle(ctx, l, c, func() {
				p.protect.leave(l.dir, c, src)
				p.untrack(c)
				conns.Done()
			})
		})
	}
}

// handlerIdle is how long a goroutine that has served a connection waits
// for the next one before it exits.
const handlerIdle = 5 * time.Second

// handlerPool runs connection handlers on goroutines that served a
// connection before and wait for another, when one waits, and on a new
// goroutine when none does. A connection's pipeline is deep (detection,
// the HTTP/1 engine, TLS): a new goroutine's stack grows to hold it, by
// copying, on every connection, which took a tenth of the client
// sidecar's CPU per new connection in peerbench (issue 12); a goroutine
// that comes back keeps its grown stack. The goroutines exit after
// handlerIdle without work, and at close.
type handlerPool struct {
	work chan func()
	quit chan struct{}
	wg   sync.WaitGroup
}

func newHandlerPool() *handlerPool {
	return &handlerPool{work: make(chan func()), quit: make(chan struct{})}
}

// run runs f on a waiting goroutine, or a new one.
func (h *handlerPool) run(f func()) {
	select {
	case h.work <- f:
		return
	default:
	}
	h.wg.Go(func() {
		f()
		idle := time.NewTimer(handlerIdle)
		defer idle.Stop()
		for {
			select {
			case f := <-h.work:
				f()
				idle.Reset(handlerIdle)
			case <-idle.C:
				return
			case <-h.quit:
				return
			}
		}
	})
}

// close ends the waiting goroutines, once every handler has returned.
func (h *handlerPool) close() {
	close(h.quit)
	h.wg.Wait()
}
