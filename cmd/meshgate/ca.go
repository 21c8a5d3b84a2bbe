package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshgate/mtls"
	"meshgate/mtls/ca"
)

const caDescription = `
The mesh certificate authority. Every workload in the mesh has an identity,
a SPIFFE ID of the form

  spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>

carried in its certificate. Sidecars present these certificates to each
other and trust the ones signed by the CA of their trust domain.

Subcommands:
  init    create a CA (a root and an intermediate) in a directory
  issue   issue a workload certificate into a directory the sidecar reads
          with 'meshgate proxy --cert-dir'
  serve   issue short-lived workload certificates over the network, which
          sidecars renew on their own

Run 'meshgate ca <subcommand> --help' for its flags.

Example, a CA and a certificate for the web service account of the default
namespace:
  meshgate ca init --dir /etc/meshgate/ca --trust-domain cluster.local
  meshgate ca issue --dir /etc/meshgate/ca --id spiffe://cluster.local/ns/default/sa/web --out /etc/meshgate/certs/web`

func runCA(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	usage := func() {
		fmt.Fprintf(stderr, "Usage: meshgate ca <subcommand> [flags]\n\n%s\n", strings.TrimSpace(caDescription))
	}
	if len(args) == 0 {
		usage()
		return errUsage
	}
	switch args[0] {
	case "init":
		return runCAInit(args[1:], stdout, stderr)
	case "issue":
		return runCAIssue(args[1:], stdout, stderr)
	case "serve":
		return runCAServe(ctx, args[1:], stderr)
	case "help", "-h", "-help", "--help":
		usage()
		return flag.ErrHelp
	}
	fmt.Fprintf(stderr, "meshgate ca: unknown subcommand %q; want init, issue or serve (see 'meshgate ca --help')\n", args[0])
	return errUsage
}

func runCAInit(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ca init", "--dir DIR --trust-domain TD [--force]", `
Create a certificate authority for one trust domain in --dir:

  root.pem          the root certificate, valid for 10 years: the trust
                    bundle every sidecar of the trust domain gets
  root.key          the root's key; issuing does not need it, so keep it
                    offline once the CA is made
  intermediate.pem  the intermediate certificate, valid for 1 year, signed
                    by the root; it signs the workload certificates
  intermediate.key  the intermediate's key

Keys are ECDSA P-256 and their files are readable by their owner only
(0600). The directory is created (0700) if needed. An existing CA is never
replaced unless --force is given.

The trust domain names the mesh, like a DNS domain: lowercase letters,
digits, '.', '-' and '_' (e.g. cluster.local or prod.example.com).

Example:
  meshgate ca init --dir /etc/meshgate/ca --trust-domain cluster.local`, stderr)
	dir := fs.String("dir", "", "create the CA in `DIR`")
	tdFlag := fs.String("trust-domain", "", "the trust domain `TD` the CA issues identities for, e.g. cluster.local")
	force := fs.Bool("force", false, "replace a CA already in --dir; certificates it issued stop being trusted where its root is replaced")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	var problems []error
	if *dir == "" {
		problems = append(problems, errors.New("--dir is required: the directory to create the CA in, e.g. --dir /etc/meshgate/ca"))
	}
	var td spiffeid.TrustDomain
	if *tdFlag == "" {
		problems = append(problems, errors.New("--trust-domain is required: the name of the mesh, e.g. --trust-domain cluster.local"))
	} else {
		var err error
		if td, err = spiffeid.TrustDomainFromString(*tdFlag); err != nil {
			problems = append(problems, fmt.Errorf("--trust-domain %q: %v; want a name like cluster.local", *tdFlag, err))
		}
	}
	if len(problems) > 0 {
		return errors.Join(problems...)
	}

	var opts []ca.InitOption
	if *force {
		opts = append(opts, ca.Overwrite())
	}
	c, err := ca.Init(*dir, td, opts...)
	if errors.Is(err, ca.ErrExists) {
		return fmt.Errorf("--dir %s: a CA is already there; pass --force to replace it (certificates it issued stop being trusted once its root is replaced)", *dir)
	}
	if err != nil {
		return fmt.Errorf("--dir %s: %w", *dir, cause(err))
	}
	stamp := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	fmt.Fprintf(stdout, "created the CA of trust domain %s in %s:\n", td, *dir)
	fmt.Fprintf(stdout, "  %-17s root certificate, valid until %s: the trust bundle\n", ca.RootCertFile, stamp(c.Root().NotAfter))
	fmt.Fprintf(stdout, "  %-17s root key (0600): not needed to issue; keep it offline\n", ca.RootKeyFile)
	fmt.Fprintf(stdout, "  %-17s intermediate certificate, valid until %s\n", ca.IntermediateCertFile, stamp(c.Intermediate().NotAfter))
	fmt.Fprintf(stdout, "  %-17s intermediate key (0600): signs workload certificates\n", ca.IntermediateKeyFile)
	fmt.Fprintf(stdout, "next: meshgate ca issue --dir %s --id spiffe://%s/ns/<namespace>/sa/<service-account> --out <cert-dir>\n", *dir, td)
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error {
	*l = append(*l, s)
	return nil
}

func runCAIssue(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ca issue", "--dir DIR --id SPIFFE_ID [--dns NAME]... [--ttl 24h] [--also-trust FILE]... --out DIR", `
Issue a workload certificate from the CA in --dir (made by 'meshgate ca
init') and write it into --out, in the layout 'meshgate proxy --cert-dir'
reads:

  cert.pem    the workload certificate, then the intermediate
  key.pem     its private key, ECDSA P-256, made here and never sent
              anywhere (mode 0600)
  bundle.pem  the trust bundle: the CA's root (and any --also-trust roots)

The certificate carries --id, the workload's SPIFFE ID, and the --dns
names, and serves as both TLS client and server certificate. It is valid
from a minute ago (for clock skew) for --ttl, but never past the
intermediate's expiry.

To renew, issue again into the same --out: each file is replaced through a
rename, and a running sidecar picks the new certificate up for its next
connections without dropping the open ones.

To rotate the root with no failed connection, in three steps, each done
for every workload before the next begins: make a new CA and keep issuing
from the old one with '--also-trust NEW/root.pem' (both roots trusted);
then issue from the new CA with '--also-trust OLD/root.pem'; then issue
from the new CA alone.

Examples:
  meshgate ca issue --dir /etc/meshgate/ca --id spiffe://cluster.local/ns/default/sa/web \
      --dns web.default.svc --out /etc/meshgate/certs/web
  meshgate ca issue --dir /etc/meshgate/ca --id spiffe://cluster.local/ns/shop/sa/cart --ttl 1h --out ./cart`, stderr)
	dir := fs.String("dir", "", "the CA's `DIR` (from 'meshgate ca init')")
	idFlag := fs.String("id", "", "the workload's `SPIFFE_ID`, spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")
	var dnsNames, alsoTrust stringList
	fs.Var(&dnsNames, "dns", "a DNS `NAME` for the certificate (repeat for several), e.g. web.default.svc")
	ttl := fs.Duration("ttl", 24*time.Hour, "how long the certificate is valid, e.g. 1h or 720h")
	fs.Var(&alsoTrust, "also-trust", "add the roots in PEM `FILE` to bundle.pem (repeat for several); for a root rotation")
	out := fs.String("out", "", "write cert.pem, key.pem and bundle.pem into `DIR` (created if needed)")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}

	var problems []error
	if *dir == "" {
		problems = append(problems, errors.New("--dir is required: the CA's directory, made by 'meshgate ca init'"))
	}
	var id spiffeid.ID
	if *idFlag == "" {
		problems = append(problems, errors.New("--id is required: the workload's SPIFFE ID, e.g. --id spiffe://cluster.local/ns/default/sa/web"))
	} else {
		var err error
		if id, err = spiffeid.FromString(*idFlag); err != nil {
			problems = append(problems, fmt.Errorf("--id %q: not a SPIFFE ID (%v); want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", *idFlag, err))
		} else if id.Path() == "" {
			problems = append(problems, fmt.Errorf("--id %q: names the trust domain, not a workload; want spiffe://%s/ns/<namespace>/sa/<service-account>", *idFlag, id.TrustDomain()))
		}
	}
	for _, n := range dnsNames {
		if err := ca.ValidateDNSName(n); err != nil {
			problems = append(problems, fmt.Errorf("--dns %q: %v", n, err))
		}
	}
	if *ttl <= 0 {
		problems = append(problems, fmt.Errorf("--ttl %s: want a positive duration, e.g. 24h", *ttl))
	}
	var extraRoots []*x509.Certificate
	for _, f := range alsoTrust {
		roots, err := mtls.ReadRoots(f)
		if err != nil {
			problems = append(problems, fmt.Errorf("--also-trust %s: %v; want a PEM file of root certificates, like a CA's root.pem", f, cause(err)))
		}
		extraRoots = append(extraRoots, roots...)
	}
	if *out == "" {
		problems = append(problems, errors.New("--out is required: the directory to write cert.pem, key.pem and bundle.pem into"))
	}
	if len(problems) > 0 {
		return errors.Join(problems...)
	}

	c, err := ca.Load(*dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("--dir %s: no CA there (%v); create one with 'meshgate ca init --dir %s --trust-domain %s'",
			*dir, cause(err), *dir, id.TrustDomain())
	case err != nil:
		return fmt.Errorf("--dir %s: %v", *dir, cause(err))
	case !id.MemberOf(c.TrustDomain()):
		return fmt.Errorf("--id %s: trust domain %s is not the CA's; the CA in %s issues spiffe://%s/... IDs only", id, id.TrustDomain(), *dir, c.TrustDomain())
	}
	chain, err := c.IssueDir(*out, id, dnsNames, *ttl, extraRoots...)
	if err != nil {
		if strings.HasPrefix(err.Error(), "mtls: write "+*out+": ") {
			return fmt.Errorf("--out %s: %v", *out, cause(err))
		}
		return err
	}
	roots := append([]*x509.Certificate{c.Root()}, extraRoots...)
	leaf := chain[0]
	fmt.Fprintf(stdout, "issued %s (serial %x), valid until %s, into %s:\n", id, leaf.SerialNumber, leaf.NotAfter.UTC().Format(time.RFC3339), *out)
	if leaf.NotAfter.Before(time.Now().Add(*ttl - ca.ClockSkew)) {
		fmt.Fprintf(stdout, "  (shorter than --ttl %s: a certificate never outlives the intermediate)\n", *ttl)
	}
	fmt.Fprintf(stdout, "  %-10s the certificate and the intermediate\n", mtls.CertFile)
	fmt.Fprintf(stdout, "  %-10s its private key (0600)\n", mtls.KeyFile)
	plural := "s"
	if len(roots) == 1 {
		plural = ""
	}
	fmt.Fprintf(stdout, "  %-10s the trust bundle: %d root%s\n", mtls.BundleFile, len(roots), plural)
	fmt.Fprintf(stdout, "use it with: meshgate proxy --cert-dir %s\n", *out)
	return nil
}

// cause is err without the package's naming of what failed, for a
// message that names the flag instead.
func cause(err error) error {
	var ce *ca.Error
	var de *mtls.Error
	switch {
	case errors.As(err, &ce):
		return ce.Err
	case errors.As(err, &de):
		return de.Err
	}
	return err
}

func runCAServe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("ca serve", "--dir DIR --listen ADDR [--ttl 1h] [--tokens FILE] [--dns NAME]... [--also-trust FILE]...", `
Serve the CA in --dir (made by 'meshgate ca init') over the network, so
sidecars get short-lived certificates and renew them on their own, with
no certificate files to hand out.

A sidecar sends a certificate signing request for its SPIFFE ID, made with
a new ECDSA P-256 key that never leaves it, over TLS 1.3 (JSON over HTTPS,
POST /v1/sign). Its first certificate it obtains with a bootstrap token
from --tokens; after that it renews at about half the certificate's life,
authenticated by the certificate it holds, which can renew its own
identity only. Every certificate issued and every request refused is
logged (the audit log), with the token's fingerprint, never the token.

--tokens holds one bootstrap token per line: the SPIFFE ID the token may
obtain, a space, the token (at least 32 characters, e.g. from 'openssl
rand -hex 16'); lines starting with # are comments. The file is read again
at every bootstrap request: add or remove lines with no restart. Without
--tokens, only renewals are served.

The server presents a certificate for spiffe://<trust-domain>/meshgate/ca,
which it issues itself; sidecars check that identity, and verify it on the
first contact with the CA's root.pem. It stops on SIGTERM or Ctrl-C,
finishing the requests in flight.

Example:
  echo "spiffe://cluster.local/ns/default/sa/web $(openssl rand -hex 16)" >> /etc/meshgate/tokens
  meshgate ca serve --dir /etc/meshgate/ca --listen :15012 --ttl 1h --tokens /etc/meshgate/tokens`, stderr)
	dir := fs.String("dir", "", "the CA's `DIR` (from 'meshgate ca init')")
	listen := fs.String("listen", "", "listen on `ADDR`, e.g. :15012 or 10.0.0.5:15012")
	ttl := fs.Duration("ttl", time.Hour, "how long the certificates issued are valid; sidecars renew at about half of it")
	tokens := fs.String("tokens", "", "bootstrap tokens `FILE` (see above); without it, renewals only")
	var dnsNames, alsoTrust stringList
	fs.Var(&dnsNames, "dns", "a DNS `NAME` of the server, for its own certificate (repeat for several)")
	fs.Var(&alsoTrust, "also-trust", "add the roots in PEM `FILE` to the bundle handed out and trusted (repeat for several); for a root rotation")
	logLevel := fs.String("log-level", "info", "log `level`: debug, info, warn or error")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}

	var problems []error
	if *dir == "" {
		problems = append(problems, errors.New("--dir is required: the CA's directory, made by 'meshgate ca init'"))
	}
	if *listen == "" {
		problems = append(problems, errors.New("--listen is required: the address to serve on, e.g. --listen :15012"))
	} else if _, port, err := net.SplitHostPort(*listen); err != nil || port == "" {
		problems = append(problems, fmt.Errorf("--listen %q: want an address like :15012 or 10.0.0.5:15012", *listen))
	}
	if *ttl <= 0 {
		problems = append(problems, fmt.Errorf("--ttl %s: want a positive duration, e.g. 1h", *ttl))
	}
	for _, n := range dnsNames {
		if err := ca.ValidateDNSName(n); err != nil {
			problems = append(problems, fmt.Errorf("--dns %q: %v", n, err))
		}
	}
	var extraRoots []*x509.Certificate
	for _, f := range alsoTrust {
		roots, err := mtls.ReadRoots(f)
		if err != nil {
			problems = append(problems, fmt.Errorf("--also-trust %s: %v; want a PEM file of root certificates, like a CA's root.pem", f, cause(err)))
		}
		extraRoots = append(extraRoots, roots...)
	}
	log, err := newLogger(*logLevel)
	if err != nil {
		problems = append(problems, err)
	}
	if len(problems) > 0 {
		return errors.Join(problems...)
	}
	defer log.Sync()

	c, err := ca.Load(*dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("--dir %s: no CA there (%v); create one with 'meshgate ca init --dir %s --trust-domain TD'",
			*dir, cause(err), *dir)
	case err != nil:
		return fmt.Errorf("--dir %s: %v", *dir, cause(err))
	}
	srv, err := ca.NewServer(c, ca.ServerOptions{TTL: *ttl, TokensFile: *tokens, DNSNames: dnsNames, ExtraRoots: extraRoots, Log: log})
	if err != nil {
		var te *ca.TokensError
		if errors.As(err, &te) {
			return fmt.Errorf("--tokens %s: %s", *tokens, te.Where())
		}
		return cause(err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %v", *listen, err)
	}
	return srv.Serve(ctx, ln)
}
