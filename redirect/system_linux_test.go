package redirect

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
)

// fakeTools puts shell scripts standing in for iptables binaries in a
// directory that becomes the whole search path. Each save command prints
// the given number of rules.
func fakeTools(t *testing.T, tools map[string]string) {
	t.Helper()
	dir := t.TempDir()
	for name, body := range tools {
		script := "#!/bin/sh\n" + body + "\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir)
	old := sbinDirs
	sbinDirs = nil
	t.Cleanup(func() { sbinDirs = old })
}

func rules(n int) string {
	var b strings.Builder
	b.WriteString("echo '*filter'\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "echo '-A INPUT -p tcp -m tcp --dport %d -j ACCEPT'\n", i+1)
	}
	return b.String()
}

func TestDetectBackend(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("needs /bin/sh")
	}
	both := func(nft, legacy int, plainMode string) map[string]string {
		m := map[string]string{
			"iptables-nft": "exit 0", "ip6tables-nft": "exit 0", "iptables-nft-save": rules(nft), "ip6tables-nft-save": "exit 0",
			"iptables-legacy": "exit 0", "ip6tables-legacy": "exit 0", "iptables-legacy-save": rules(legacy), "ip6tables-legacy-save": "exit 0",
		}
		if plainMode != "" {
			m["iptables"] = "echo 'iptables v1.8.9 (" + plainMode + ")'"
		}
		return m
	}
	for _, tc := range []struct {
		name  string
		tools map[string]string
		want  string
	}{
		{"legacy holds the rules", both(0, 3, "nf_tables"), "legacy"},
		{"nft holds the rules", both(5, 1, "legacy"), "nft"},
		{"no rules: the system's choice", both(0, 0, "legacy"), "legacy"},
		{"no rules, no plain iptables: nft", both(0, 0, ""), "nft"},
		{"nft save fails", func() map[string]string {
			m := both(0, 0, "nf_tables")
			m["iptables-nft-save"] = "echo 'Could not fetch rule set generation id' >&2; exit 1"
			return m
		}(), "legacy"},
		{"only plain legacy iptables (Alpine)", map[string]string{
			"iptables": "echo 'iptables v1.8.10 (legacy)'", "iptables-save": rules(1), "ip6tables": "exit 0", "ip6tables-save": "exit 0",
		}, "legacy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fakeTools(t, tc.tools)
			be, err := detectBackend(zaptest.NewLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			if be.name != tc.want {
				t.Errorf("backend %s, want %s", be.name, tc.want)
			}
			if !strings.HasPrefix(filepath.Base(be.ipt4), "iptables") || be.ipt6 == "" {
				t.Errorf("tools %+v", be)
			}
		})
	}
}

func TestNoIPTables(t *testing.T) {
	fakeTools(t, nil)
	_, err := detectBackend(zaptest.NewLogger(t))
	if !errors.Is(err, ErrNoIPTables) {
		t.Fatalf("error %v, want ErrNoIPTables", err)
	}
	want := "redirect: iptables is not installed (looked for iptables-nft, iptables-legacy and iptables in $PATH); install it: apt-get install iptables (Debian, Ubuntu), apk add iptables (Alpine), dnf install iptables-nft (Fedora, RHEL)"
	if err.Error() != want {
		t.Errorf("error:\n got %s\nwant %s", err, want)
	}
	// Through Apply, with nothing changed and the same message.
	c := DefaultConfig()
	if err := Apply(t.Context(), c, Options{}); !errors.Is(err, ErrNoIPTables) {
		t.Errorf("Apply: %v", err)
	}
}
