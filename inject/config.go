package inject

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"

	"meshgate/netlist"
)

// Names and ports of what injection adds, shared with the sidecar, the init
// container and the tests that run them (issue 14's plan).
const (
	// InitName is the init container that installs the capture rules.
	InitName = "meshgate-init"
	// ProxyName is the sidecar container.
	ProxyName = "meshgate-proxy"

	// HealthPort is the sidecar's health port: /healthz/ready and the
	// rewritten app probes under /app-health/.
	HealthPort = 15021
	// MetricsPort is the sidecar's Prometheus port.
	MetricsPort = 15020
	// HealthPortName and MetricsPortName name the two ports in the
	// sidecar's ports. A port name is an IANA service name: at most 15
	// characters, so "meshgate-metrics" (16) would be refused by the API
	// server.
	HealthPortName  = "meshgate-health"
	MetricsPortName = "meshgate-prom"
	// ProxyUID is the UID (and GID) the sidecar runs as; the capture rules
	// exempt its traffic.
	ProxyUID = 1337

	// AppHealthPrefix starts the health-port paths that rewritten probes
	// use: /app-health/<container>/<livez|readyz|startupz>.
	AppHealthPrefix = "/app-health/"

	// EnvAppProbes holds the app's original probes, as JSON, on the sidecar.
	EnvAppProbes = "MESHGATE_APP_PROBES"
	// EnvExitWithApp makes the classic sidecar of a Job exit once the app
	// has.
	EnvExitWithApp = "MESHGATE_EXIT_WITH_APP"

	// Volume names and where the sidecar mounts them.
	CARootVolume = "meshgate-ca-root"
	CARootDir    = "/var/run/meshgate/ca"
	TokenVolume  = "meshgate-token"
	TokenDir     = "/var/run/meshgate/token"
	CertsVolume  = "meshgate-certs"
	CertsDir     = "/var/run/meshgate/certs"
)

// Annotations read from the pod (or pod template, or the workload object)
// and written to the injected pod.
const (
	// AnnotationInject set to "false" opts a workload out.
	AnnotationInject = "meshgate.io/inject"
	// AnnotationStatus marks an injected pod with the meshgate version.
	AnnotationStatus = "meshgate.io/injected"
	// AnnotationSharedPID records that injection, not the user, set
	// shareProcessNamespace (classic sidecar of a Job), so that a later
	// injection with other flags can take it back.
	AnnotationSharedPID = "meshgate.io/injected-share-process-namespace"

	AnnotationInboundPorts         = "meshgate.io/inbound-ports"
	AnnotationExcludeInboundPorts  = "meshgate.io/exclude-inbound-ports"
	AnnotationExcludeOutboundPorts = "meshgate.io/exclude-outbound-ports"
	AnnotationExcludeOutboundCIDRs = "meshgate.io/exclude-outbound-cidrs"
	AnnotationIncludeOutboundCIDRs = "meshgate.io/include-outbound-cidrs"
	AnnotationCaptureDNS           = "meshgate.io/capture-dns"
	AnnotationMTLSMode             = "meshgate.io/mtls-mode"
)

// CertSource is where the sidecar gets its certificate.
type CertSource string

const (
	// CertSourceCAServer: from "meshgate ca serve", with a bootstrap token
	// from the secret meshgate-token-<serviceAccount> and the CA's root from
	// the config map meshgate-ca-root.
	CertSourceCAServer CertSource = "ca-server"
	// CertSourceSecret: cert.pem, key.pem and bundle.pem from a secret.
	CertSourceSecret CertSource = "secret"
)

// Config is how workloads are injected. Start from DefaultConfig; field
// comments name the flag of "meshgate inject" that sets the field.
type Config struct {
	// Image is the meshgate image of both containers. --image.
	Image string
	// Native makes the sidecar a native sidecar (an init container with
	// restartPolicy Always, Kubernetes 1.29+); false makes it the first
	// app container (classic). --native-sidecar.
	Native bool
	// CertSource is where the sidecar's certificate comes from.
	// --cert-source.
	CertSource CertSource
	// CAServer is the CA server's host:port (CertSourceCAServer).
	// --ca-server.
	CAServer string
	// TrustDomain is the trust domain of the sidecar's SPIFFE ID
	// (CertSourceCAServer). --trust-domain.
	TrustDomain string
	// CertSecret names the secret (CertSourceSecret); empty means
	// meshgate-certs-<serviceAccount>. --cert-secret.
	CertSecret string
	// MTLSMode is the sidecar's --mtls-mode (strict, permissive or
	// disable); empty leaves the sidecar's default. The annotation
	// meshgate.io/mtls-mode wins. --mtls-mode.
	MTLSMode string
	// MeshCIDRs is the sidecar's --mesh-cidrs: the addresses of the pods
	// with a sidecar (the cluster's pod CIDRs), to which outbound
	// connections are mTLS; empty leaves the sidecar's default (mesh
	// destinations only through discovery). --mesh-cidrs.
	MeshCIDRs string
	// Version is written in the meshgate.io/injected annotation.
	Version string
}

// DefaultConfig is the Config of "meshgate inject" with no flags.
func DefaultConfig() Config {
	return Config{
		Image:       "meshgate:latest",
		Native:      true,
		CertSource:  CertSourceCAServer,
		CAServer:    "meshgate-ca.meshgate-system.svc:15012",
		TrustDomain: "cluster.local",
		Version:     "dev",
	}
}

var (
	// trustDomainRE is a SPIFFE trust domain: lowercase letters, digits,
	// dots, dashes and underscores.
	trustDomainRE = regexp.MustCompile(`^[a-z0-9._-]+$`)
	// dns1123SubdomainRE is a Kubernetes object name (secrets).
	dns1123SubdomainRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// Validate reports every problem of c at once, each naming its flag.
func (c Config) Validate() error {
	var errs []error
	if c.Image == "" {
		errs = append(errs, errors.New("--image: empty; name the meshgate image, e.g. meshgate:latest"))
	}
	switch c.CertSource {
	case CertSourceCAServer:
		if host, port, err := net.SplitHostPort(c.CAServer); err != nil || host == "" || !validPort(port) {
			errs = append(errs, fmt.Errorf("--ca-server %q: want host:port, e.g. meshgate-ca.meshgate-system.svc:15012", c.CAServer))
		}
		if !trustDomainRE.MatchString(c.TrustDomain) {
			errs = append(errs, fmt.Errorf("--trust-domain %q: want a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_'), e.g. cluster.local", c.TrustDomain))
		}
		if c.CertSecret != "" {
			errs = append(errs, errors.New("--cert-secret with --cert-source ca-server: the secret is only read with --cert-source secret; drop one"))
		}
	case CertSourceSecret:
		if c.CertSecret != "" && (len(c.CertSecret) > 253 || !dns1123SubdomainRE.MatchString(c.CertSecret)) {
			errs = append(errs, fmt.Errorf("--cert-secret %q: not a secret name (lowercase letters, digits, '-' and '.')", c.CertSecret))
		}
	default:
		errs = append(errs, fmt.Errorf("--cert-source %q: want ca-server or secret", c.CertSource))
	}
	if err := checkMTLSMode(c.MTLSMode); err != nil {
		errs = append(errs, fmt.Errorf("--mtls-mode %w", err))
	}
	if _, err := netlist.ParseCIDRs(c.MeshCIDRs); err != nil {
		errs = append(errs, netlist.Named("--mesh-cidrs", err)...)
	}
	if c.Version == "" {
		errs = append(errs, errors.New("inject: Config.Version is empty"))
	}
	return errors.Join(errs...)
}

func checkMTLSMode(m string) error {
	switch m {
	case "", "strict", "permissive", "disable":
		return nil
	}
	return fmt.Errorf("%q: want strict, permissive or disable", m)
}

func validPort(s string) bool {
	n, err := strconv.ParseUint(s, 10, 16)
	return err == nil && n > 0
}
