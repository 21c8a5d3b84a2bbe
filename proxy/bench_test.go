package proxy

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// BenchmarkL4 measures what one proxy on loopback costs against talking to
// the backend directly:
//
//	throughput: one connection, 256 KiB written per op to a backend that
//	            discards it (b.SetBytes: MB/s is the one-way rate);
//	rtt:        one connection, a 64-byte request echoed back per op.
//
// Run: go test -run '^$' -bench L4 -benchtime 2s ./proxy
func BenchmarkL4(b *testing.B) {
	sink := startBackend(b, "127.0.0.1:0", discardAndCount)
	echoer := startBackend(b, "127.0.0.1:0", echo)

	for _, path := range []string{"direct", "proxied"} {
		b.Run(path, func(b *testing.B) {
			b.Run("throughput", func(b *testing.B) {
				benchThroughput(b, entry(b, path, sink.addr()))
			})
			b.Run("rtt", func(b *testing.B) {
				benchRTT(b, entry(b, path, echoer.addr()))
			})
		})
	}
}

// BenchmarkCopy compares the two ways forward can move bytes, through the
// whole proxy: splice(2) (the default) and a pooled 32 KiB buffer (the
// fallback).
func BenchmarkCopy(b *testing.B) {
	sink := startBackend(b, "127.0.0.1:0", discardAndCount)
	echoer := startBackend(b, "127.0.0.1:0", echo)
	for _, m := range []struct {
		name string
		mode copyMode
	}{{"splice", copySplice}, {"buffer", copyBuffer}} {
		b.Run(m.name, func(b *testing.B) {
			b.Run("throughput", func(b *testing.B) {
				benchThroughput(b, entry(b, "proxied", sink.addr(), withCopyMode(m.mode)))
			})
			b.Run("rtt", func(b *testing.B) {
				benchRTT(b, entry(b, "proxied", echoer.addr(), withCopyMode(m.mode)))
			})
		})
	}
}

// discardAndCount reads to EOF, then answers with the byte count.
func discardAndCount(c *net.TCPConn) {
	buf := make([]byte, 256<<10)
	var n uint64
	for {
		m, err := c.Read(buf)
		n += uint64(m)
		if err != nil {
			break
		}
	}
	binary.Write(c, binary.BigEndian, n)
}

// entry returns the address a client dials: the backend itself, or a
// proxy in front of it.
func entry(b *testing.B, path, backend string, opts ...Option) string {
	if path == "direct" {
		return backend
	}
	cfg := testConfig()
	p, err := New(cfg, zap.NewNop(), append([]Option{WithRegistry(prometheus.NewRegistry()), to(backend)}, opts...)...)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	})
	select {
	case <-p.Ready():
	case err := <-done:
		b.Fatal(err)
	}
	return (&running{Proxy: p}).out()
}

func benchThroughput(b *testing.B, addr string) {
	const chunk = 256 << 10
	c := dial(b, addr)
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ReportAllocs()
	var sent uint64
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		sent += chunk
	}
	// Everything written must have arrived before the clock stops.
	c.CloseWrite()
	var got uint64
	if err := binary.Read(c, binary.BigEndian, &got); err != nil || got != sent {
		b.Fatalf("backend read %d bytes (%v), want %d", got, err, sent)
	}
}

func benchRTT(b *testing.B, addr string) {
	c := dial(b, addr)
	msg := make([]byte, 64)
	reply := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, reply); err != nil {
			b.Fatal(err)
		}
	}
}
