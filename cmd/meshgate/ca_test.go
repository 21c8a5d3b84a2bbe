package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshgate/mtls"
	"meshgate/mtls/ca"
)

// newTestCA makes a CA of a.example in a temporary directory.
func newTestCA(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	var stdout, stderr bytes.Buffer
	if err := runCA(context.Background(), []string{"init", "--dir", dir, "--trust-domain", "a.example"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestCARejects pins the full text of every refusal of 'meshgate ca': each
// names the flag and the fix.
func TestCARejects(t *testing.T) {
	caDir := newTestCA(t)
	tmp := t.TempDir()
	noCA := filepath.Join(tmp, "empty")
	os.Mkdir(noCA, 0o700)
	leafDir := filepath.Join(tmp, "leaf")
	var sink bytes.Buffer
	if err := runCA(context.Background(), []string{"issue", "--dir", caDir, "--id", "spiffe://a.example/ns/default/sa/web", "--out", leafDir}, &sink, &sink); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(tmp, "garbage.pem")
	os.WriteFile(garbage, []byte("not PEM"), 0o600)
	out := filepath.Join(tmp, "out")
	issue := func(extra ...string) []string {
		return append([]string{"issue", "--dir", caDir, "--id", "spiffe://a.example/ns/default/sa/web", "--out", out}, extra...)
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"init without flags", []string{"init"}, strings.Join([]string{
			"--dir is required: the directory to create the CA in, e.g. --dir /etc/meshgate/ca",
			"--trust-domain is required: the name of the mesh, e.g. --trust-domain cluster.local",
		}, "\n")},
		{"init with an uppercase trust domain", []string{"init", "--dir", tmp, "--trust-domain", "Cluster.Local"},
			`--trust-domain "Cluster.Local": trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores; want a name like cluster.local`},
		{"init over an existing CA", []string{"init", "--dir", caDir, "--trust-domain", "a.example"},
			"--dir " + caDir + ": a CA is already there; pass --force to replace it (certificates it issued stop being trusted once its root is replaced)"},
		{"init where a file is", []string{"init", "--dir", garbage, "--trust-domain", "a.example"},
			"--dir " + garbage + ": mkdir " + garbage + ": not a directory"},
		{"issue without flags", []string{"issue"}, strings.Join([]string{
			"--dir is required: the CA's directory, made by 'meshgate ca init'",
			"--id is required: the workload's SPIFFE ID, e.g. --id spiffe://cluster.local/ns/default/sa/web",
			"--out is required: the directory to write cert.pem, key.pem and bundle.pem into",
		}, "\n")},
		{"issue with a bare name as ID", []string{"issue", "--dir", caDir, "--id", "web", "--out", out},
			`--id "web": not a SPIFFE ID (scheme is missing or invalid); want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`},
		{"issue for the trust domain itself", []string{"issue", "--dir", caDir, "--id", "spiffe://a.example", "--out", out},
			`--id "spiffe://a.example": names the trust domain, not a workload; want spiffe://a.example/ns/<namespace>/sa/<service-account>`},
		{"issue with a bad DNS name", issue("--dns", "web.default.svc", "--dns", "web_svc"),
			`--dns "web_svc": '_' is not allowed; want letters, digits, '-' and '.'`},
		{"issue with a zero lifetime", issue("--ttl", "0s"), "--ttl 0s: want a positive duration, e.g. 24h"},
		{"issue with a missing extra root", issue("--also-trust", filepath.Join(tmp, "nope.pem")),
			"--also-trust " + filepath.Join(tmp, "nope.pem") + ": open " + filepath.Join(tmp, "nope.pem") + ": no such file or directory; want a PEM file of root certificates, like a CA's root.pem"},
		{"issue with a workload certificate as extra root", issue("--also-trust", filepath.Join(leafDir, "cert.pem")),
			"--also-trust " + filepath.Join(leafDir, "cert.pem") + `: "O=meshgate" is not a CA certificate; want a PEM file of root certificates, like a CA's root.pem`},
		{"issue with garbage as extra root", issue("--also-trust", garbage),
			"--also-trust " + garbage + ": no complete PEM CERTIFICATE block (truncated file?); want a PEM file of root certificates, like a CA's root.pem"},
		{"issue from a directory without a CA", []string{"issue", "--dir", noCA, "--id", "spiffe://a.example/ns/default/sa/web", "--out", out},
			"--dir " + noCA + ": no CA there (root.pem: open " + noCA + "/root.pem: no such file or directory); create one with 'meshgate ca init --dir " + noCA + " --trust-domain a.example'"},
		{"issue from a certificate directory", []string{"issue", "--dir", leafDir, "--id", "spiffe://a.example/ns/default/sa/web", "--out", out},
			"--dir " + leafDir + ": no CA there (root.pem: open " + leafDir + "/root.pem: no such file or directory); create one with 'meshgate ca init --dir " + leafDir + " --trust-domain a.example'"},
		{"issue for another trust domain", []string{"issue", "--dir", caDir, "--id", "spiffe://b.example/ns/default/sa/web", "--out", out},
			"--id spiffe://b.example/ns/default/sa/web: trust domain b.example is not the CA's; the CA in " + caDir + " issues spiffe://a.example/... IDs only"},
		{"issue into a file", []string{"issue", "--dir", caDir, "--id", "spiffe://a.example/ns/default/sa/web", "--out", garbage},
			"--out " + garbage + ": mkdir " + garbage + ": not a directory"},
		{"every problem at once", []string{"issue", "--id", "web", "--ttl", "-1h", "--dns", "a b"}, strings.Join([]string{
			"--dir is required: the CA's directory, made by 'meshgate ca init'",
			`--id "web": not a SPIFFE ID (scheme is missing or invalid); want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`,
			`--dns "a b": ' ' is not allowed; want letters, digits, '-' and '.'`,
			"--ttl -1h0m0s: want a positive duration, e.g. 24h",
			"--out is required: the directory to write cert.pem, key.pem and bundle.pem into",
		}, "\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := runCA(context.Background(), tc.args, &stdout, &stderr)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("error:\n got %v\nwant %s", err, tc.want)
			}
			if stdout.Len() != 0 {
				t.Errorf("a refused command printed:\n%s", stdout.String())
			}
		})
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a refused issue created --out: %v", err)
	}
}

// TestCAUsage: a missing or unknown subcommand is a usage error (exit 2);
// a refusal through main is one line (exit 1).
func TestCAUsage(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"no subcommand", []string{"ca"}, 2, "Usage: meshgate ca <subcommand> [flags]\n"},
		{"unknown subcommand", []string{"ca", "sign"}, 2,
			"meshgate ca: unknown subcommand \"sign\"; want init, issue or serve (see 'meshgate ca --help')\n"},
		{"refusal", []string{"ca", "issue", "--dir", "/nonexistent", "--id", "spiffe://a.example/ns/default/sa/web", "--out", "/nonexistent/out"}, 1,
			"meshgate ca: --dir /nonexistent: no CA there (root.pem: open /nonexistent/root.pem: no such file or directory); create one with 'meshgate ca init --dir /nonexistent --trust-domain a.example'\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := mainExit(tc.args, &stdout, &stderr)
			if code != tc.code || !strings.HasPrefix(stderr.String(), tc.stderr) {
				t.Errorf("exit %d, stderr:\n%s\nwant exit %d, stderr starting:\n%s", code, stderr.String(), tc.code, tc.stderr)
			}
		})
	}
}

func TestCAHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"Usage: meshgate ca <subcommand> [flags]", "spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", "init ", "issue ", "serve ", "Example"}},
		{[]string{"serve", "--help"}, []string{"Usage: meshgate ca serve --dir DIR --listen ADDR [--ttl 1h] [--tokens FILE] [--dns NAME]... [--also-trust FILE]...",
			"bootstrap token", "audit log", "openssl rand -hex 16", "spiffe://<trust-domain>/meshgate/ca",
			"-dir DIR", "-listen ADDR", "-ttl duration", "(default 1h0m0s)", "-tokens FILE", "-dns NAME", "-also-trust FILE", "-log-level level", "Example:"}},
		{[]string{"init", "--help"}, []string{"Usage: meshgate ca init --dir DIR --trust-domain TD [--force]", "root.key", "0600",
			"-dir DIR", "-trust-domain TD", "-force", "Example:"}},
		{[]string{"issue", "--help"}, []string{
			"Usage: meshgate ca issue --dir DIR --id SPIFFE_ID [--dns NAME]... [--ttl 24h] [--also-trust FILE]... --out DIR",
			"cert.pem", "key.pem", "bundle.pem", "meshgate proxy --cert-dir", "To renew", "To rotate the root",
			"-dir DIR", "-id SPIFFE_ID", "-dns NAME", "-ttl duration", "(default 24h0m0s)", "-also-trust FILE", "-out DIR", "Examples:"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := runCA(context.Background(), tc.args, &stdout, &stderr)
			if !errors.Is(err, flag.ErrHelp) {
				t.Fatalf("error %v, want flag.ErrHelp", err)
			}
			for _, s := range tc.want {
				if !strings.Contains(stderr.String(), s) {
					t.Errorf("help lacks %q:\n%s", s, stderr.String())
				}
			}
		})
	}
	var stdout, stderr bytes.Buffer
	if code := mainExit([]string{"help", "ca"}, &stdout, &stderr); code != 0 || !strings.Contains(stderr.String(), "Usage: meshgate ca") {
		t.Errorf("'meshgate help ca': exit %d, stderr %s", code, stderr.String())
	}
}

// TestCAInitIssue: init, then issue into a directory a DirSource reads,
// then renew into the same directory and rotate the root.
func TestCAInitIssue(t *testing.T) {
	tmp := t.TempDir()
	caDir, out := filepath.Join(tmp, "ca"), filepath.Join(tmp, "certs", "web")
	var stdout, stderr bytes.Buffer
	if err := runCA(context.Background(), []string{"init", "--dir", caDir, "--trust-domain", "a.example"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	c, err := ca.Load(caDir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stdout.String(), "created the CA of trust domain a.example in "+caDir+":\n") ||
		!strings.Contains(stdout.String(), "next: meshgate ca issue --dir "+caDir+" --id spiffe://a.example/ns/<namespace>/sa/<service-account> --out <cert-dir>\n") {
		t.Errorf("init printed:\n%s", stdout.String())
	}

	stdout.Reset()
	args := []string{"issue", "--dir", caDir, "--id", "spiffe://a.example/ns/default/sa/web", "--dns", "web.default.svc", "--dns", "web", "--ttl", "2h", "--out", out}
	if err := runCA(context.Background(), args, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	src, err := mtls.NewDirSource(out, nil)
	if err != nil {
		t.Fatalf("the issued directory does not load: %v", err)
	}
	defer src.Close()
	leaf := src.CurrentSVID().Certificates[0]
	if src.CurrentSVID().ID.String() != "spiffe://a.example/ns/default/sa/web" || strings.Join(leaf.DNSNames, ",") != "web.default.svc,web" ||
		leaf.NotAfter.Sub(leaf.NotBefore) != 2*time.Hour+ca.ClockSkew {
		t.Errorf("issued %s, DNS %v, valid %s to %s", src.CurrentSVID().ID, leaf.DNSNames, leaf.NotBefore, leaf.NotAfter)
	}
	wantOut := fmt.Sprintf("issued spiffe://a.example/ns/default/sa/web (serial %x), valid until %s, into %s:\n", leaf.SerialNumber, leaf.NotAfter.UTC().Format(time.RFC3339), out) +
		"  cert.pem   the certificate and the intermediate\n" +
		"  key.pem    its private key (0600)\n" +
		"  bundle.pem the trust bundle: 1 root\n" +
		"use it with: meshgate proxy --cert-dir " + out + "\n"
	if stdout.String() != wantOut {
		t.Errorf("issue printed:\n%s\nwant:\n%s", stdout.String(), wantOut)
	}
	if info, err := os.Stat(filepath.Join(out, "key.pem")); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("key.pem: %v, mode %v", err, info.Mode().Perm())
	}
	if b, _ := src.GetX509BundleForTrustDomain(c.TrustDomain()); !b.X509Authorities()[0].Equal(c.Root()) {
		t.Error("bundle.pem is not the CA's root")
	}

	// Root rotation, first step: a new CA's root joins the bundle.
	newCA := filepath.Join(tmp, "ca2")
	if err := runCA(context.Background(), []string{"init", "--dir", newCA, "--trust-domain", "a.example"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	args = []string{"issue", "--dir", caDir, "--id", "spiffe://a.example/ns/default/sa/web", "--also-trust", filepath.Join(newCA, "root.pem"), "--out", out}
	if err := runCA(context.Background(), args, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "bundle.pem the trust bundle: 2 roots") {
		t.Errorf("issue printed:\n%s", stdout.String())
	}
	waitUntil(t, "the renewed certificate", func() bool {
		b, _ := src.GetX509BundleForTrustDomain(c.TrustDomain())
		return src.CurrentSVID().Certificates[0].SerialNumber.Cmp(leaf.SerialNumber) != 0 && len(b.X509Authorities()) == 2
	})
}

// waitUntil polls cond for up to 10 s: a wait for a reload, not a timing
// assertion.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCAServeRejects pins the refusals of 'meshgate ca serve'.
func TestCAServeRejects(t *testing.T) {
	caDir := newTestCA(t)
	tmp := t.TempDir()
	short := filepath.Join(tmp, "short-tokens")
	os.WriteFile(short, []byte("spiffe://a.example/ns/default/sa/web secret\n"), 0o600)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"without flags", []string{"serve"}, strings.Join([]string{
			"--dir is required: the CA's directory, made by 'meshgate ca init'",
			"--listen is required: the address to serve on, e.g. --listen :15012",
		}, "\n")},
		{"port missing", []string{"serve", "--dir", caDir, "--listen", "10.0.0.5"},
			`--listen "10.0.0.5": want an address like :15012 or 10.0.0.5:15012`},
		{"zero lifetime and a bad level", []string{"serve", "--dir", caDir, "--listen", ":0", "--ttl", "0s", "--log-level", "loud"}, strings.Join([]string{
			"--ttl 0s: want a positive duration, e.g. 1h",
			`--log-level "loud": want debug, info, warn or error`,
		}, "\n")},
		{"no CA", []string{"serve", "--dir", tmp, "--listen", "127.0.0.1:0"},
			"--dir " + tmp + ": no CA there (root.pem: open " + tmp + "/root.pem: no such file or directory); create one with 'meshgate ca init --dir " + tmp + " --trust-domain TD'"},
		{"missing tokens file", []string{"serve", "--dir", caDir, "--listen", "127.0.0.1:0", "--tokens", filepath.Join(tmp, "none")},
			"--tokens " + filepath.Join(tmp, "none") + ": open " + filepath.Join(tmp, "none") + ": no such file or directory"},
		{"weak token", []string{"serve", "--dir", caDir, "--listen", "127.0.0.1:0", "--tokens", short},
			"--tokens " + short + ": line 1: token shorter than 32 characters; make one with: openssl rand -hex 16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := runCA(context.Background(), tc.args, &stdout, &stderr)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("error:\n got %v\nwant %s", err, tc.want)
			}
		})
	}
}

// TestCAServe runs 'meshgate ca serve' and gets a certificate from it with
// a bootstrap token; the server stops when its context ends.
func TestCAServe(t *testing.T) {
	caDir := newTestCA(t)
	c, err := ca.Load(caDir)
	if err != nil {
		t.Fatal(err)
	}
	const token = "0123456789abcdef0123456789abcdef"
	tokens := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(tokens, []byte("spiffe://a.example/ns/default/sa/web "+token+"\n"), 0o600)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	var stderr bytes.Buffer
	go func() {
		done <- runCA(ctx, []string{"serve", "--dir", caDir, "--listen", addr, "--ttl", "10m", "--tokens", tokens, "--log-level", "error"}, io.Discard, &stderr)
	}()
	id := spiffeid.RequireFromString("spiffe://a.example/ns/default/sa/web")
	var src *mtls.CAClientSource
	waitUntil(t, "the CA server", func() bool {
		src, err = mtls.NewCAClientSource(ctx, mtls.CAClientConfig{Server: addr, ID: id, Token: token, Roots: []*x509.Certificate{c.Root()}}, nil)
		return err == nil
	})
	leaf := src.CurrentSVID().Certificates[0]
	if src.CurrentSVID().ID != id || leaf.NotAfter.Sub(leaf.NotBefore) != 10*time.Minute+ca.ClockSkew {
		t.Errorf("got %s valid %s to %s", src.CurrentSVID().ID, leaf.NotBefore, leaf.NotAfter)
	}
	src.Close()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("serve returned %v", err)
	}
}
