package discovery

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestWatchRegistry: a changed registry file is answered from at once
// (an editor's rename included); a broken one is refused and the
// registry in use stays.
func TestWatchRegistry(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "registry.yaml")
	write := func(endpoint string) []byte {
		t.Helper()
		b := []byte("services:\n- name: web.shop.mesh\n  endpoints: [" + endpoint + "]\n  ttl: 1s\n")
		tmp := filepath.Join(dir, ".registry.yaml.tmp")
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
		return b
	}
	first := write("10.0.0.1")
	reg, err := ParseRegistry(first)
	if err != nil {
		t.Fatal(err)
	}
	logs, observed := observer.New(zapcore.WarnLevel)
	s, addr := startProxyWith(t, Options{Registry: reg, Log: zap.New(logs)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.WatchRegistry(ctx, path, first) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	answer := func() string {
		m := ask(t, addr, "udp", "web.shop.mesh.", dns.TypeA, 0)
		if len(m.Answer) != 1 {
			return m.String()
		}
		return m.Answer[0].(*dns.A).A.String()
	}
	waitFor := func(what string, done func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !done() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 5s after the file changed (web.shop.mesh A = %s)", what, answer())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	answers := func(want string) func() bool { return func() bool { return answer() == want } }
	waitFor("10.0.0.1", answers("10.0.0.1"))
	write("10.0.0.2")
	waitFor("10.0.0.2", answers("10.0.0.2"))
	if err := os.WriteFile(path, []byte("services:\n- name: web.shop.mesh\n  endpoints: [not-an-ip]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Once the broken file has been read (and refused), the registry in
	// use still answers.
	waitFor("the broken file refused", func() bool {
		return observed.FilterMessage("registry file rejected; keeping the registry in use").Len() > 0
	})
	if got := answer(); !strings.Contains(got, "10.0.0.2") {
		t.Errorf("after a broken file: %s, want the registry in use (10.0.0.2)", got)
	}
	write("10.0.0.3")
	waitFor("10.0.0.3", answers("10.0.0.3"))
}
