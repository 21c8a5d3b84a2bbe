package discovery

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
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
	s, addr := startProxy(t, reg)
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
	waitFor := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for answer() != want {
			if time.Now().After(deadline) {
				t.Fatalf("web.shop.mesh A = %s, want %s after the file changed", answer(), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("10.0.0.1")
	write("10.0.0.2")
	waitFor("10.0.0.2")
	if err := os.WriteFile(path, []byte("services:\n- name: web.shop.mesh\n  endpoints: [not-an-ip]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if got := answer(); !strings.Contains(got, "10.0.0.2") {
		t.Errorf("after a broken file: %s, want the registry in use (10.0.0.2)", got)
	}
	write("10.0.0.3")
	waitFor("10.0.0.3")
}
