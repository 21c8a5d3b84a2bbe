package main

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"

	"meshgate/mtls"
	"meshgate/mtls/ca"
)

// certSource is where the sidecar's certificate comes from: one of
// package mtls's sources.
type certSource interface {
	mtls.Source
	CurrentSVID() *x509svid.SVID
	Close() error
}

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
	mark        uint32 // the socket mark of connections to the CA or the Workload API (the proxy config's mark)

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
	} else if roots, err := readRoots(c.rootFile); err != nil {
		bad("--ca-root %s: %v; want a PEM file of root certificates, like a CA's root.pem", c.rootFile, err)
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

// open opens the source the flags chose; nil, nil when they chose none.
func (c *certFlags) open(ctx context.Context, log *zap.Logger) (certSource, error) {
	switch {
	case c.dir != "":
		src, err := mtls.NewDirSource(c.dir, log)
		if err != nil {
			msg := strings.TrimPrefix(err.Error(), "mtls: cert dir "+c.dir+": ")
			if errors.Is(err, fs.ErrNotExist) {
				msg += "; want cert.pem, key.pem and bundle.pem there, e.g. from 'meshgate ca issue --out " + c.dir + "'"
			}
			return nil, fmt.Errorf("--cert-dir %s: %s", c.dir, msg)
		}
		return src, nil
	case c.workloadAPI != "":
		src, err := mtls.NewWorkloadAPISource(ctx, c.workloadAPI, c.mark, log)
		if err != nil {
			return nil, fmt.Errorf("--workload-api: %v", strings.TrimPrefix(err.Error(), "mtls: "))
		}
		return src, nil
	case c.caServer != "":
		return c.openCA(ctx, log)
	}
	return nil, nil
}

// openCA gets the first certificate from the CA server, trying again
// with backoff for --ca-wait: a sidecar often starts before its CA can
// be reached.
func (c *certFlags) openCA(ctx context.Context, log *zap.Logger) (certSource, error) {
	cfg := mtls.CAClientConfig{Server: c.caServer, ID: c.spiffeID, DNSNames: c.dns, Token: c.token, Roots: c.roots, Mark: c.mark}
	waitCtx, cancel := context.WithTimeout(ctx, c.caWait)
	defer cancel()
	backoff := 100 * time.Millisecond
	for {
		src, err := mtls.NewCAClientSource(waitCtx, cfg, log)
		if err == nil {
			return src, nil
		}
		msg := strings.TrimPrefix(err.Error(), "mtls: CA client: ")
		log.Warn("no certificate from the CA server yet", zap.String("ca_server", c.caServer), zap.String("error", msg))
		select {
		case <-waitCtx.Done():
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("--ca-server %s: no certificate within --ca-wait %s: %s", c.caServer, c.caWait, msg)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// certCollector exports the certificate the sidecar presents (when it
// expires, which one it is, which root it chains to) and the size of its
// trust bundle: what to watch during a rotation.
type certCollector struct{ src certSource }

var (
	certExpiryDesc = prometheus.NewDesc("meshgate_tls_certificate_expiry_timestamp_seconds",
		"When the workload certificate the sidecar presents expires (Unix time), by its SPIFFE ID, serial number (hex) "+
			"and the key ID (hex) of the root it chains to, which 'openssl x509 -noout -ext subjectKeyIdentifier' shows for a root.pem.",
		[]string{"spiffe_id", "serial", "root_key_id"}, nil)
	bundleRootsDesc = prometheus.NewDesc("meshgate_tls_trust_bundle_roots",
		"Roots in the sidecar's trust bundle for its own trust domain: 2 while a root rotation is under way.",
		[]string{"trust_domain"}, nil)
)

func (c certCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- certExpiryDesc
	ch <- bundleRootsDesc
}

func (c certCollector) Collect(ch chan<- prometheus.Metric) {
	svid := c.src.CurrentSVID()
	if svid == nil || len(svid.Certificates) == 0 {
		return
	}
	leaf, top := svid.Certificates[0], svid.Certificates[len(svid.Certificates)-1]
	ch <- prometheus.MustNewConstMetric(certExpiryDesc, prometheus.GaugeValue,
		float64(leaf.NotAfter.Unix()), svid.ID.String(), leaf.SerialNumber.Text(16), hex.EncodeToString(top.AuthorityKeyId))
	td := svid.ID.TrustDomain()
	if b, err := c.src.GetX509BundleForTrustDomain(td); err == nil {
		ch <- prometheus.MustNewConstMetric(bundleRootsDesc, prometheus.GaugeValue, float64(len(b.X509Authorities())), td.Name())
	}
}
