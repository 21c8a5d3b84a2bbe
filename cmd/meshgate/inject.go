package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"go.uber.org/zap"

	"meshgate/inject"
)

const injectDescription = `
Add meshgate to Kubernetes workloads: read manifests (YAML or JSON; several
documents separated by ---, and Lists), write them to stdout with every
Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and CronJob
injected, and say on stderr, one line per object, what was done.

Each pod gets:
  meshgate-init    an init container that runs 'meshgate init' to install
                   the capture rules (root, NET_ADMIN and NET_RAW only)
  meshgate-proxy   the sidecar (UID 1337, read-only root): by default a
                   native sidecar (an init container with restartPolicy
                   Always, Kubernetes 1.29+) the app starts after; with
                   --native-sidecar=false the first app container, with a
                   postStart hook ('meshgate wait') the app starts after
  volumes          its certificate source (--cert-source): the CA server's
                   root (config map meshgate-ca-root) and bootstrap token
                   (secret meshgate-token-<serviceAccount>), or a secret
                   holding cert.pem, key.pem and bundle.pem
  probes           HTTP, gRPC and TCP probes of the app go to the sidecar's
                   health port 15021 (/app-health/<container>/<probe>),
                   which runs the original against the app, so they keep
                   working under strict mTLS
  annotation       meshgate.io/injected: <version>
A Job's or CronJob's pod with a classic sidecar shares its PID namespace and
its sidecar exits once the app has, so the Job completes.

Annotations of the pod template (or of the workload, or the Pod):
  meshgate.io/inject: "false"                 leave the workload alone
  meshgate.io/inbound-ports: "8080,9090"      capture only these (* for all)
  meshgate.io/exclude-inbound-ports: "22"
  meshgate.io/exclude-outbound-ports: "3306"
  meshgate.io/exclude-outbound-cidrs: "169.254.169.254/32"
  meshgate.io/include-outbound-cidrs: "10.0.0.0/8" (* for all)
  meshgate.io/capture-dns: "true"
  meshgate.io/mtls-mode: strict|permissive|disable
Pods with hostNetwork are skipped: the rules would capture the node's
traffic.

Injecting is idempotent: an injected manifest injected again, with the same
flags or others, is as if injected once with the last flags.

'meshgate inject serve' does the same to pods as an admission webhook;
run 'meshgate inject serve --help'.

Examples:
  meshgate inject -f deploy.yaml | kubectl apply -f -
  kubectl get deploy web -o yaml | meshgate inject -f - | kubectl apply -f -
  meshgate inject -f job.yaml --native-sidecar=false --cert-source secret`

const injectServeDescription = `
Serve 'meshgate inject' as a Kubernetes mutating admission webhook, over
HTTPS (TLS 1.2 or later):

  POST /inject    an AdmissionReview (admission.k8s.io/v1) of a pod being
                  created; the answer allows it with the JSON Patch that
                  injects it, allows it unchanged when it is not to be
                  injected (the reason is the status message), or denies
                  it when its annotations or probes are wrong
  GET  /healthz   200

A review that cannot be read is answered with HTTP 400, so the webhook's
failurePolicy decides. The certificate and key files are reloaded when
they change. Each review is logged (JSON, one line). SIGTERM stops the
server after the reviews in flight are answered.

Register it with a MutatingWebhookConfiguration for pods (CREATE) in
namespaces labelled meshgate.io/inject=enabled, admissionReviewVersions
[v1], path /inject.

Example:
  meshgate inject serve --tls-cert /etc/webhook/tls.crt --tls-key /etc/webhook/tls.key --native-sidecar=false`

// injectStdin is what "-f -" reads; tests replace it.
var injectStdin io.Reader = os.Stdin

// addInjectFlags registers the flags of inject.Config on fs and returns a
// function to call after parsing, which validates them.
func addInjectFlags(fs *flag.FlagSet) func() (inject.Config, error) {
	d := inject.DefaultConfig()
	image := fs.String("image", d.Image, "the meshgate `image` of the init container and the sidecar")
	native := fs.Bool("native-sidecar", d.Native, "a native sidecar (init container with restartPolicy Always, Kubernetes 1.29+); false: the first app container")
	source := fs.String("cert-source", string(d.CertSource), "where the sidecar gets its certificate: `ca-server` (from 'meshgate ca serve') or secret (--cert-secret)")
	caServer := fs.String("ca-server", d.CAServer, "with --cert-source ca-server: the CA server's `host:port`")
	trustDomain := fs.String("trust-domain", d.TrustDomain, "with --cert-source ca-server: the trust `domain` of the sidecars' SPIFFE IDs (spiffe://DOMAIN/ns/NS/sa/SA)")
	certSecret := fs.String("cert-secret", "", "with --cert-source secret: the `secret` with cert.pem, key.pem and bundle.pem (default meshgate-certs-<serviceAccount>)")
	mtlsMode := fs.String("mtls-mode", "", "the sidecars' --mtls-mode: strict, permissive or disable (default: the sidecar's); the annotation meshgate.io/mtls-mode wins")
	meshCIDRs := fs.String("mesh-cidrs", "", "the sidecars' --mesh-cidrs: comma-separated `CIDRs` of the pods with a sidecar (the cluster's pod CIDRs, e.g. 10.244.0.0/16), to which outbound connections are mTLS")
	return func() (inject.Config, error) {
		c := inject.Config{
			Image:       *image,
			Native:      *native,
			CertSource:  inject.CertSource(*source),
			CAServer:    *caServer,
			TrustDomain: *trustDomain,
			CertSecret:  *certSecret,
			MTLSMode:    *mtlsMode,
			MeshCIDRs:   *meshCIDRs,
			Version:     version,
		}
		return c, c.Validate()
	}
}

func runInject(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "serve" {
		return runInjectServe(ctx, args[1:], stdout, stderr)
	}
	fs := newFlagSet("inject", "-f FILE|- [flags] | meshgate inject serve [flags]", injectDescription, stderr)
	file := fs.String("f", "", "the manifests `FILE` to inject; - for stdin (required)")
	config := addInjectFlags(fs)
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	cfg, err := config()
	if *file == "" {
		err = errors.Join(errors.New("-f: missing; name the manifests file, or - to read stdin"), err)
	}
	if err != nil {
		for _, line := range splitLines(err) {
			fmt.Fprintf(stderr, "meshgate inject: %v\n", line)
		}
		return errUsage
	}

	var data []byte
	if *file == "-" {
		data, err = io.ReadAll(injectStdin)
	} else {
		data, err = os.ReadFile(*file)
	}
	if err != nil {
		return fmt.Errorf("-f: %w", err)
	}
	out, results, err := cfg.Manifests(data)
	if err != nil {
		return err
	}
	if _, err := stdout.Write(out); err != nil {
		return err
	}
	for _, r := range results {
		fmt.Fprintln(stderr, r)
	}
	return nil
}

func runInjectServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("inject serve", "--tls-cert FILE --tls-key FILE [--listen ADDR] [inject flags]", injectServeDescription, stderr)
	listen := fs.String("listen", ":15017", "serve HTTPS on `ADDR`")
	certFile := fs.String("tls-cert", "", "the server's certificate `FILE` (PEM, the chain after the leaf); reloaded when it changes (required)")
	keyFile := fs.String("tls-key", "", "the server's private key `FILE` (PEM); reloaded when it changes (required)")
	grace := fs.Duration("shutdown-grace", 10*time.Second, "on SIGTERM, how long to wait for the reviews in flight")
	logLevel := fs.String("log-level", "info", "log `level`: debug, info, warn or error")
	config := addInjectFlags(fs)
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	cfg, err := config()
	problems := []error{err}
	if *certFile == "" {
		problems = append(problems, errors.New("--tls-cert: missing; name the webhook's certificate file"))
	}
	if *keyFile == "" {
		problems = append(problems, errors.New("--tls-key: missing; name the webhook's private key file"))
	}
	log, err := newLogger(*logLevel)
	problems = append(problems, err)
	if err := errors.Join(problems...); err != nil {
		for _, line := range splitLines(err) {
			fmt.Fprintf(stderr, "meshgate inject serve: %v\n", line)
		}
		return errUsage
	}
	defer log.Sync()
	log = log.Named("inject")

	certs, err := inject.NewCertReloader(*certFile, *keyFile)
	if err != nil {
		return err
	}
	certs.OnError = func(err error) { log.Error("webhook certificate", zap.Error(err)) }
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	srv := &http.Server{
		Handler:           &inject.Webhook{Config: cfg, Log: log},
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.GetCertificate},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       90 * time.Second,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
	log.Info("serving the admission webhook", zap.String("listen", ln.Addr().String()),
		zap.Bool("nativeSidecar", cfg.Native), zap.String("image", cfg.Image), zap.String("certSource", string(cfg.CertSource)))

	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("stopping: answering the reviews in flight", zap.Duration("grace", *grace))
	sctx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	err = srv.Shutdown(sctx)
	<-served
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
