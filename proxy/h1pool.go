package proxy

import (
	"crypto/tls"
	"net"
	"net/netip"
	"sync"
	"time"
)

// h1PoolIdle is how long an idle pooled connection is kept.
const h1PoolIdle = 90 * time.Second

// h1PoolMax bounds the idle connections kept per upstream.
const h1PoolMax = 256

// h1CheckAfter: a pooled connection idle for longer than this is checked
// for a close by its peer before it is used (many servers close idle
// keep-alive connections after a few seconds; a peer sidecar closes its
// idle ones when it drains). On a mesh connection whose handshake is long
// over, bytes nobody asked for are a close_notify.
const h1CheckAfter = time.Second

// h1Up is an upstream connection of the engine.
type h1Up struct {
	tcp  *net.TCPConn
	conn net.Conn // tls over tcp (mesh), or tcp
	r    h1Reader
	w    h1Writer
	info tlsInfo
	key  poolKey
	// idleSince is when it went back to the pool; zero for a new one.
	idleSince time.Time
	// idle, when set and shorter than h1PoolIdle, is how long it may
	// stay idle: its destination's resilience timeouts.idle.
	idle time.Duration
}

// expired reports whether u, idle in the pool, has been for too long.
func (u *h1Up) expired(now time.Time) bool {
	limit := h1PoolIdle
	if u.idle > 0 && u.idle < limit {
		limit = u.idle
	}
	return now.Sub(u.idleSince) > limit
}

func newH1Up(tcp *net.TCPConn, tc *tls.Conn, info tlsInfo, key poolKey) *h1Up {
	u := &h1Up{tcp: tcp, info: info, key: key}
	if tc != nil {
		u.conn = tc
	} else {
		u.conn = tcp
	}
	u.r.src, u.w.dst = u.conn, u.conn
	return u
}

// poolKey names what a pooled connection leads to: a mesh endpoint, or
// an app address.
type poolKey struct {
	addr netip.AddrPort
	mesh bool
}

// h1Pool keeps idle upstream connections, newest first.
type h1Pool struct {
	p     *Proxy
	mu    sync.Mutex
	idle  map[poolKey][]*h1Up
	timer *time.Timer
	// sweepAt is when timer fires.
	sweepAt time.Time
	closed  bool
}

func newH1Pool(p *Proxy) *h1Pool { return &h1Pool{p: p, idle: make(map[poolKey][]*h1Up)} }

// get returns an idle connection to key, nil if none.
func (pl *h1Pool) get(key poolKey, now time.Time) *h1Up {
	pl.mu.Lock()
	for {
		list := pl.idle[key]
		if len(list) == 0 {
			pl.mu.Unlock()
			return nil
		}
		u := list[len(list)-1]
		list[len(list)-1] = nil
		pl.idle[key] = list[:len(list)-1]
		if u.expired(now) {
			// The rest are older still (and have the same idle timeout
			// but for endpoints of destinations with different ones).
			rest := pl.idle[key]
			delete(pl.idle, key)
			pl.mu.Unlock()
			pl.p.closeUpstream(u.tcp)
			for _, o := range rest {
				pl.p.closeUpstream(o.tcp)
			}
			return nil
		}
		if now.Sub(u.idleSince) > h1CheckAfter && !idleAlive(u.tcp) {
			pl.mu.Unlock()
			pl.p.closeUpstream(u.tcp)
			pl.mu.Lock()
			continue
		}
		pl.mu.Unlock()
		return u
	}
}

// drop closes the idle connections to key.
func (pl *h1Pool) drop(key poolKey) {
	pl.mu.Lock()
	list := pl.idle[key]
	delete(pl.idle, key)
	pl.mu.Unlock()
	for _, u := range list {
		pl.p.closeUpstream(u.tcp)
	}
}

// put keeps u for reuse, or closes it when the pool is full or closed.
func (pl *h1Pool) put(u *h1Up, now time.Time) {
	if !u.r.release() {
		pl.p.closeUpstream(u.tcp) // bytes nobody asked for: not reusable
		return
	}
	u.w.release()
	u.idleSince = now
	pl.mu.Lock()
	if pl.closed || len(pl.idle[u.key]) >= h1PoolMax {
		pl.mu.Unlock()
		pl.p.closeUpstream(u.tcp)
		return
	}
	pl.idle[u.key] = append(pl.idle[u.key], u)
	switch due := now.Add(h1PoolIdle); {
	case u.idle > 0 && u.idle < h1PoolIdle && pl.timer != nil && now.Add(u.idle).Before(pl.sweepAt):
		// Sooner than the sweep planned: a destination's idle timeout.
		// (A timer that fired already has its sweep about to run, which
		// plans the next one by u.)
		if pl.timer.Stop() {
			pl.timer.Reset(u.idle)
			pl.sweepAt = now.Add(u.idle)
		}
	case pl.timer == nil:
		if u.idle > 0 && u.idle < h1PoolIdle {
			due = now.Add(u.idle)
		}
		pl.timer = time.AfterFunc(due.Sub(now), pl.sweep)
		pl.sweepAt = due
	}
	pl.mu.Unlock()
}

// sweep closes the connections idle for longer than h1PoolIdle, and runs
// again later while any are kept.
func (pl *h1Pool) sweep() {
	now := time.Now()
	var expired []*h1Up
	pl.mu.Lock()
	next := h1PoolIdle / 3
	for k, list := range pl.idle {
		kept := list[:0]
		for _, u := range list {
			if u.expired(now) {
				expired = append(expired, u)
				continue
			}
			kept = append(kept, u)
			if u.idle > 0 && u.idle < h1PoolIdle {
				next = min(next, u.idleSince.Add(u.idle).Sub(now)+time.Millisecond)
			}
		}
		clear(list[len(kept):])
		if len(kept) == 0 {
			delete(pl.idle, k)
		} else {
			pl.idle[k] = kept
		}
	}
	pl.timer = nil
	if len(pl.idle) > 0 && !pl.closed {
		pl.timer = time.AfterFunc(next, pl.sweep)
		pl.sweepAt = now.Add(next)
	}
	pl.mu.Unlock()
	for _, u := range expired {
		pl.p.closeUpstream(u.tcp)
	}
}

// closeIdle closes every idle connection; closing (at drain) also keeps
// the pool from taking more.
func (pl *h1Pool) closeIdle(closing bool) {
	pl.mu.Lock()
	idle := pl.idle
	pl.idle = make(map[poolKey][]*h1Up)
	pl.closed = pl.closed || closing
	if pl.timer != nil {
		pl.timer.Stop()
		pl.timer = nil
	}
	pl.mu.Unlock()
	for _, list := range idle {
		for _, u := range list {
			pl.p.closeUpstream(u.tcp)
		}
	}
}
