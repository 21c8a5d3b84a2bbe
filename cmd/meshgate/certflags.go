package main

import (
	"crypto/x509"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshgate/mtls"
	"meshgate/mtls/ca"
	"meshgate/sidecar"
)

// certFlags are the proxy's flags choosing its certificate source.
type certFlags struct {
	fs          *flag.FlagSet
	dir         string
	caServer    string
	id          string
	tokenFile   string
	rootFile    string
	dns         stringList
	caWait      time.Duration
	workloadAPI string

	// Set by check.
	spiffeID spiffeid.ID
	roots    []*x509.Certificate
	token    string
}

func (c *certFlags) add(fs *flag.FlagSet) {
	c.fs = fs
	fs.StringVar(&c.dir, "cert-dir", "", "certificate `DIR` holding cert.pem, key.pem and bundle.pem, reloaded when they change")
	fs.StringVar(&c.caServer, "ca-server", "", "get certificates from 'meshgate ca serve' at `ADDR` (host:port); needs --id, --ca-token-file and --ca-root")
	fs.StringVar(&c.id, "id", "", "with --ca-server: the sidecar's `SPIFFE_ID`, e.g. spiffe://cluster.local/ns/default/sa/web")
	fs.StringVar(&c.tokenFile, "ca-token-file", "", "with --ca-server: `FILE` holding the bootstrap token for the first certificate")
	fs.StringVar(&c.rootFile, "ca-root", "", "with --ca-server: the CA's root.pem `FILE`, to verify the CA server on first contact")
	fs.Var(&c.dns, "dns", "with --ca-server: a DNS `NAME` to ask for in the certificate (repeat for several)")
	fs.DurationVar(&c.caWait, "ca-wait", 30*time.Second, "with --ca-server: how long to keep trying for the first certificate before giving up")
	fs.StringVar(&c.workloadAPI, "workload-api", "", "get certificates from the SPIFFE Workload API at `ADDR`, e.g. unix:///run/spire/sockets/agent.sock")
}

// check reports every problem of the flags, each naming its flag.
func (c *certFlags) check() []error {
	var problems []error
	bad := func(format string, args ...any) { problems = append(problems, fmt.Errorf(format, args...)) }
	var chosen []string
	for _, f := range []string{"cert-dir", "ca-server", "workload-api"} {
		if flagSet(c.fs, f) {
			chosen = append(chosen, "--"+f)
		}
	}
	if len(chosen) > 1 {
		bad("%s: give one certificate source, not %d", strings.Join(chosen, ", "), len(chosen))
	}
	if flagSet(c.fs, "cert-dir") && c.dir == "" {
		bad("--cert-dir: empty; want the directory holding cert.pem, key.pem and bundle.pem")
	}
	if flagSet(c.fs, "workload-api") && c.workloadAPI == "" {
		bad("--workload-api: empty; want an address like unix:///run/spire/sockets/agent.sock")
	}
	if !flagSet(c.fs, "ca-server") {
		for _, f := range []string{"id", "ca-token-file", "ca-root", "dns", "ca-wait"} {
			if flagSet(c.fs, f) {
				bad("--%s: goes with --ca-server; add --ca-server ADDR or drop --%s", f, f)
			}
		}
		return problems
	}
	if c.caServer == "" {
		bad("--ca-server: empty; want the host:port of 'meshgate ca serve'")
	}
	switch id, err := spiffeid.FromString(c.id); {
	case c.id == "":
		bad("--id is required with --ca-server: the sidecar's SPIFFE ID, e.g. spiffe://cluster.local/ns/default/sa/web")
	case err != nil:
		bad("--id %q: not a SPIFFE ID (%v); want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", c.id, err)
	default:
		c.spiffeID = id
	}
	if c.tokenFile == "" {
		bad("--ca-token-file is required with --ca-server: a file holding the bootstrap token issued for --id")
	} else if b, err := os.ReadFile(filepath.Clean(c.tokenFile)); err != nil {
		bad("--ca-token-file: %v", err)
	} else if c.token = strings.TrimSpace(string(b)); c.token == "" {
		bad("--ca-token-file %s: empty; want the bootstrap token on one line", c.tokenFile)
	}
	if c.rootFile == "" {
		bad("--ca-root is required with --ca-server: the CA's root.pem, to verify the CA server")
	} else if roots, err := mtls.ReadRoots(c.rootFile); err != nil {
		bad("--ca-root %s: %v; want a PEM file of root certificates, like a CA's root.pem", c.rootFile, cause(err))
	} else {
		c.roots = roots
	}
	for _, n := range c.dns {
		if err := ca.ValidateDNSName(n); err != nil {
			bad("--dns %q: %v", n, err)
		}
	}
	if c.caWait <= 0 {
		bad("--ca-wait %s: want a positive duration, e.g. 30s", c.caWait)
	}
	return problems
}

// proxyArgs are the flags given, as arguments of "meshgate proxy", with
// file and directory paths made absolute: enroll starts the sidecar with
// them, from another working directory.
func (c *certFlags) proxyArgs() []string {
	var args []string
	c.fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "cert-dir", "ca-token-file", "ca-root":
			v := f.Value.String()
			if abs, err := filepath.Abs(v); err == nil && v != "" {
				v = abs
			}
			args = append(args, "--"+f.Name, v)
		case "dns":
			for _, n := range c.dns {
				args = append(args, "--dns", n)
			}
		case "ca-server", "id", "ca-wait", "workload-api":
			args = append(args, "--"+f.Name, f.Value.String())
		}
	})
	return args
}

// certs is the source the flags chose, for the sidecar; call it after
// check.
func (c *certFlags) certs() sidecar.Certs {
	sc := sidecar.Certs{Dir: c.dir, WorkloadAPI: c.workloadAPI, CAWait: c.caWait}
	if c.caServer != "" {
		sc.CA = mtls.CAClientConfig{Server: c.caServer, ID: c.spiffeID, DNSNames: c.dns, Token: c.token, Roots: c.roots}
	}
	return sc
}
