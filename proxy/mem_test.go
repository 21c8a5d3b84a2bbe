package proxy

import (
	"io"
	"net"
	"runtime"
	rtmetrics "runtime/metrics"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkConnMemory measures what an open, idle connection holds in a
// pair of sidecars on loopback (client → client sidecar → server sidecar
// → backend): connections conns at once each carry one 1 KiB echo, then
// wait to read, and the live heap and goroutine stacks are compared with the same connections made to the backend directly. The
// metrics are per connection, for both sidecars together:
//
//	heap-B/conn   live heap objects, after a GC
//	stack-B/conn  goroutine stacks, before it (as an idle sidecar that
//	              seldom collects keeps them)
//	goroutines/conn
//
// It is memory held, not RSS: a process's RSS is this plus what the
// garbage collector lets grow between cycles (GOGC), see cmd/meshgate.
//
// Run: go test -run '^$' -bench ConnMemory -benchtime 1x ./proxy
func BenchmarkConnMemory(b *testing.B) {
	const conns = 500
	echoer := startBackend(b, "127.0.0.1:0", smallEcho)
	mca := newMeshCA(b)
	for _, path := range []string{"l4-pair", "mtls-pair"} {
		b.Run(path, func(b *testing.B) {
			addr := meshEntry(b, path, mca, echoer.addr(), true)
			var d memSample
			for b.Loop() {
				direct := holdConns(b, echoer.addr(), conns)
				proxied := holdConns(b, addr, conns)
				d = proxied.sub(direct)
			}
			b.ReportMetric(float64(d.heap)/conns, "heap-B/conn")
			b.ReportMetric(float64(d.stack)/conns, "stack-B/conn")
			b.ReportMetric(float64(d.goroutines)/conns, "goroutines/conn")
		})
	}
}

// smallEcho echoes through a small buffer, so that the backend's own
// share, subtracted as "direct", stays small.
func smallEcho(c *net.TCPConn) {
	buf := make([]byte, 1024)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// memSample is what the process holds: goroutine stacks as they are (the
// garbage collector shrinks them, and an idle sidecar seldom collects),
// live heap after a GC.
type memSample struct{ heap, stack, goroutines int64 }

func (s memSample) sub(o memSample) memSample {
	return memSample{s.heap - o.heap, s.stack - o.stack, s.goroutines - o.goroutines}
}

func sampleMem() memSample {
	read := func(names ...string) []uint64 {
		ms := make([]rtmetrics.Sample, len(names))
		for i, n := range names {
			ms[i].Name = n
		}
		rtmetrics.Read(ms)
		v := make([]uint64, len(ms))
		for i := range ms {
			v[i] = ms[i].Value.Uint64()
		}
		return v
	}
	before := read("/memory/classes/heap/stacks:bytes", "/sched/goroutines:goroutines")
	runtime.GC()
	runtime.GC() // objects freed by finalizers go on the second
	after := read("/memory/classes/heap/objects:bytes")
	return memSample{heap: int64(after[0]), stack: int64(before[0]), goroutines: int64(before[1])}
}

// holdConns opens n connections to addr, echoes 1 KiB on each, and
// returns how much more the process holds while they are open and idle.
// It closes them before returning.
func holdConns(b *testing.B, addr string, n int) memSample {
	b.Helper()
	msg := make([]byte, 1024)
	reply := make([]byte, len(msg))
	before := sampleMem()
	cs := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range cs {
			c.Close()
		}
		settle()
	}()
	// From 127.0.0.2: the client sidecar's loop guard, which knows its
	// own connections by their local address and destination, must not
	// take one of these, from a port it also uses towards the server
	// sidecar, for its own captured again (their destination is the same
	// here, where to() stands in for the original destination).
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	for range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		cs = append(cs, c)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, reply); err != nil {
			b.Fatal(err)
		}
		c.SetDeadline(time.Time{})
	}
	return sampleMem().sub(before)
}

// settle waits for the goroutines of closed connections to end: until
// their number has not changed for a while.
func settle() {
	last, same := runtime.NumGoroutine(), 0
	for same < 5 {
		time.Sleep(20 * time.Millisecond)
		if n := runtime.NumGoroutine(); n != last {
			last, same = n, 0
			continue
		}
		same++
	}
}

// TestIdleConnectionHoldsNoBuffer checks that a forwarded connection
// waiting to read holds no copy buffer (issue 12), on each kind of leg:
// plaintext copied through a buffer, and mesh TLS both ways (client
// sidecar: plaintext to TLS and back; server sidecar: TLS to plaintext
// and back). Messages of one byte, of a few, and of many TLS records
// cross each way and come back whole; between them, with the
// connection open and idle, no buffer is out.
func TestIdleConnectionHoldsNoBuffer(t *testing.T) {
	be := startBackend(t, "127.0.0.1:0", echo)
	mca := newMeshCA(t)
	for _, tc := range []struct {
		name  string
		entry func(t *testing.T) string
	}{
		{"plaintext buffer copy", func(t *testing.T) string {
			return startProxy(t, testConfig(), to(be.addr()), withCopyMode(copyBuffer)).out()
		}},
		{"mesh TLS", func(t *testing.T) string {
			cm, sm := mca.meshes()
			return startPair(t, be.addr(), cm, sm, pairOptions{}).client.out()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, tc.entry(t))
			for _, size := range []int{1, 5, 1000, 100_000} {
				msg := strings.Repeat("m", size)
				if got := roundTrip(t, c, msg); got != msg {
					t.Fatalf("%d bytes: echoed %d bytes, not the same", size, len(got))
				}
				// The echo is back; the proxies put their buffers back
				// right after writing it.
				waitFor(t, func() bool { return bufsOut.Load() == 0 })
			}
			// Half-close still crosses: the echo ends, then EOF.
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
				t.Fatalf("after half-close: read %q, %v; want EOF", b, err)
			}
		})
	}
}

// parkedNow returns how many copy directions are parked.
func parkedNow() int { return parking.count() }

// TestIdleConnectionParks checks that a forwarded connection idle for
// the park delay parks its upstream → client direction on both sidecars
// (no goroutine waits for it), and that what comes next is served as if
// nothing happened: bytes either way, one byte or many TLS records, a
// half-close, a reset by the client (which ends the parked direction and
// resets the upstream), and the idle timeout.
func TestIdleConnectionParks(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("directions park on Linux only")
	}
	const park = 30 * time.Millisecond
	mca := newMeshCA(t)
	startMesh := func(t *testing.T, be string, idle time.Duration) *pair {
		cm, sm := mca.meshes()
		setIdle := func(c *Config) {
			if idle > 0 {
				c.Timeouts.Idle = Duration(idle)
			}
		}
		return startPair(t, be, cm, sm, pairOptions{
			clientCfg: setIdle, serverCfg: setIdle,
			clientOpts: []Option{withParkAfter(park)}, serverOpts: []Option{withParkAfter(park)},
		})
	}
	// parked waits until at least n directions are parked.
	parked := func(t *testing.T, n int) {
		t.Helper()
		waitFor(t, func() bool { return parkedNow() >= n })
	}

	t.Run("bytes and half-close after parking", func(t *testing.T) {
		be := startBackend(t, "127.0.0.1:0", echo)
		c := dial(t, startMesh(t, be.addr(), 0).client.out())
		for _, size := range []int{1, 100_000, 5} {
			parked(t, 0)
			msg := strings.Repeat("p", size)
			if got := roundTrip(t, c, msg); got != msg {
				t.Fatalf("%d bytes: echoed %d bytes, not the same", size, len(got))
			}
			// Both directions park, on both sidecars.
			parked(t, 4)
			time.Sleep(3 * park)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
			t.Fatalf("after half-close: read %q, %v; want EOF", b, err)
		}
		waitFor(t, func() bool { return parkedNow() == 0 })
	})

	t.Run("held connections hold no goroutine", func(t *testing.T) {
		const conns = 20
		var backendGoroutines atomic.Int32
		be := startBackend(t, "127.0.0.1:0", func(c *net.TCPConn) {
			backendGoroutines.Add(1)
			defer backendGoroutines.Add(-1)
			echo(c)
		})
		out := startMesh(t, be.addr(), 0).client.out()
		parked(t, 0)
		before := runtime.NumGoroutine()
		for i := range conns {
			c := dial(t, out)
			if got := roundTrip(t, c, "held"); got != "held" {
				t.Fatalf("connection %d: echoed %q", i, got)
			}
		}
		parked(t, 4*conns)
		// The backend serves each connection on a goroutine; the sidecars
		// hold none for them (a few of their own come and go).
		waitFor(t, func() bool {
			return runtime.NumGoroutine()-before-int(backendGoroutines.Load()) < conns/2
		})
	})

	t.Run("client reset while parked", func(t *testing.T) {
		ended := make(chan struct{})
		be := startBackend(t, "127.0.0.1:0", func(c *net.TCPConn) {
			defer close(ended)
			echo(c)
		})
		c := dial(t, startMesh(t, be.addr(), 0).client.out())
		roundTrip(t, c, "before")
		parked(t, 4)
		reset(c)
		select {
		case <-ended:
		case <-time.After(5 * time.Second):
			t.Fatal("the backend's connection outlived the client's reset by 5s")
		}
		waitFor(t, func() bool { return parkedNow() == 0 })
	})

	t.Run("idle timeout while parked", func(t *testing.T) {
		const idle = 400 * time.Millisecond
		be := startBackend(t, "127.0.0.1:0", echo)
		c := dial(t, startMesh(t, be.addr(), idle).client.out())
		roundTrip(t, c, "before")
		parked(t, 4)
		start := time.Now()
		expectClosed(t, c, 10*idle) // an EOF or a reset
		if took := time.Since(start); took < idle/2 {
			t.Fatalf("closed %v after it parked; want about the idle timeout, %v", took, idle)
		}
		waitFor(t, func() bool { return parkedNow() == 0 })
	})
}
