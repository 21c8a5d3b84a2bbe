package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"meshgate/netlist"
	"meshgate/proxy"
	"meshgate/proxy/appprobe"
	"meshgate/sidecar"
)

const proxyDescription = `
Run the sidecar proxy. It needs no configuration: without --config it runs
on these defaults, which match what 'meshgate redirect' installs.

  15001  outbound capture: connections the app makes, IPv4 and IPv6,
         forwarded to their original destination (SO_ORIGINAL_DST)
  15006  inbound capture: connections made to the app, forwarded to the
         app at the original destination address, from 127.0.0.6 (::6)
  15000  admin, on 127.0.0.1 only: /config, /explain, POST
         /quitquitquit, /debug/pprof/
  15020  Prometheus metrics: /metrics
  15021  health: /healthz/ready (200 once listening, 503 while draining),
         /healthz/live, and the app's own probes at the /app-health/...
         paths of --app-probes (MESHGATE_APP_PROBES)
  15053  the DNS proxy, on 127.0.0.1 and ::1, UDP and TCP (--dns-listen):
         mesh names from --registry, the rest from the resolvers of
         --resolv-conf, cached for their TTL; 'meshgate redirect
         --capture-dns' sends the app's DNS there

Its own connections carry socket mark 0x539, which the capture rules
exempt. Connect timeout 10s, idle timeout 1h. On SIGTERM it stops
accepting, reports not ready, lets open connections finish for 5s, then
closes them and exits 0.

A --config file is YAML; it overrides only the fields it names, and
unknown fields are errors. For example:

  mode: redirect            # or tproxy
  logLevel: info            # debug, info, warn, error
  accessLog: false          # true: a JSON line per HTTP request (logger "access") and per connection
  mark: 0x539
  outbound: {port: 15001}
  inbound: {port: 15006, passthroughSourceIPv4: 127.0.0.6, passthroughSourceIPv6: "::6"}
  admin: {address: "127.0.0.1:15000"}
  metrics: {address: "0.0.0.0:15020"}   # 0.0.0.0 or [::]: every address, IPv4 and IPv6
  health: {address: "0.0.0.0:15021"}
  timeouts: {connect: 10s, idle: 1h, drainGrace: 5s}

  mtls:
    mode: strict            # strict, permissive or disable (--mtls-mode)
    portModes: {8080: permissive}
    meshCIDRs: [10.0.0.0/8] # destinations with a sidecar (--mesh-cidrs)
    destinations:           # the identity a destination must present
    - {cidr: 10.1.2.0/24, identity: "spiffe://cluster.local/ns/shop/sa/payments"}
    plaintextOutsideMesh: true
  protocols:
    detectTimeout: 1s       # wait for the app's first bytes, then opaque
    ports: {3306: opaque, 8080: http}  # opaque, detect or http (served as HTTP)
    destMemory: 10m         # destinations that spoke first skip detection
    l7: true                # HTTP to the mesh as requests over pooled HTTP/2 mTLS
  loadBalancing:            # connections and requests to a service's address
    policy: p2c-peak-ewma   # or round-robin, least-request
    decay: 10s              # how fast the latency estimate forgets
    connectAttempts: 3      # endpoints tried when connecting fails
    outlierDetection: {consecutiveFailures: 5, baseEjectionTime: 30s, maxEjectionTime: 5m, maxEjectionPercent: 50}
  policy:                   # who may call the app, what it may call
    revealReason: false     # true: tell a denied caller the rule and why
    rules:                  # deny beats allow; once an allow rule applies to a port, default deny there
    - {name: api-read, action: allow, ports: [8080], from: {namespaces: [shop]}, http: {methods: [GET], paths: ["/api/*"]}}
    - {name: egress, action: allow, direction: outbound, to: {cidrs: [10.0.0.0/8]}}
  resilience:               # the app's outbound calls, per destination and route
    defaults: {timeouts: {request: 15s}, retries: {attempts: 2, on: [connect-failure, reset, "503"]}}
    destinations:
    - {name: shop-api, match: {hosts: [api.shop.mesh]}, timeouts: {request: 5s, perTry: 1s}}

The policy, access, rateLimits, redis and resilience sections are
reloaded when the --config file changes (within a second; a file with
problems is refused whole, and the running sections stay); other sections
take effect on restart. 'meshgate policy explain' and
GET /explain on the admin port say what the policy decides of a call,
and why. A denied HTTP request is answered 403 (gRPC PERMISSION_DENIED),
a denied connection that is not HTTP is reset, and nothing of either
reaches the app.

Outbound HTTP requests to the mesh are retried and bounded by the
resilience section; with none, an idempotent request (GET, HEAD, OPTIONS,
PUT, DELETE) is retried up to 2 times, on another endpoint, on a connect
failure, a reset before any byte of its answer and a 503, within a retry
budget of 20% of the destination's requests plus 3 a second. A timeout
answers 504 naming it (gRPC: DEADLINE_EXCEEDED), and the time a request
has left travels to the server's sidecar, which cancels the app's request
when it is over.

Outbound, the app's first bytes are classified (its own TLS, HTTP/1.x,
HTTP/2, or opaque) while the destination is dialed, so a server that
speaks first (MySQL, SMTP, SSH) is heard at once; ports 22, 25, 53, 110,
143, 587, 3306, 4444, 5432, 6379, 9300, 11211 and 27017 are opaque by
default. HTTP/1.x and HTTP/2 to a mesh destination go request by request
over one pooled HTTP/2 mTLS connection per destination; the server's
sidecar hands its app the client's verified SPIFFE ID in
X-Forwarded-Client-Cert. Every other protocol passes as opaque bytes.

A connection (or HTTP request) to an address the DNS proxy answered for a
mesh service goes to one of the service's endpoints, chosen by the
balancer: the endpoints of --registry (reloaded when the file changes), or
of a name whose DNS TXT record says "meshgate.meshed=true", asked again
when their TTL ends. The endpoint must present the service's identity
(the registry's, or the TXT record's "meshgate.identity=spiffe://...").

Mesh mTLS needs the sidecar's certificate, from one of three sources:

  --cert-dir DIR       cert.pem, key.pem and bundle.pem (from 'meshgate ca
                       issue', or a Kubernetes secret volume), reloaded
                       when they change
  --ca-server ADDR     'meshgate ca serve': a short-lived certificate for
                       --id, first obtained with the token in
                       --ca-token-file, verified with --ca-root, then
                       renewed at about half its life
  --workload-api ADDR  the SPIFFE Workload API (a SPIRE agent), e.g.
                       unix:///run/spire/sockets/agent.sock

With a certificate mTLS is strict unless --mtls-mode says otherwise;
without one it is off. A rotated certificate is used for new handshakes at
once; open connections are not touched.

GET /config on the admin port shows the configuration in effect.

On Kubernetes ('meshgate inject' sets both):

  --app-probes JSON    the app's original liveness, readiness and startup
                       probes, rewritten to the health port: an object
                       mapping a path under /app-health/ to the probe's
                       handler, as in the Kubernetes Probe JSON, e.g.
                       {"/app-health/web/readyz":{"httpGet":{"path":
                       "/ready","port":8080},"timeoutSeconds":1}}
                       (httpGet with scheme HTTP or HTTPS, grpc, tcpSocket).
                       A request to the path runs the probe against the app
                       (127.0.0.1 unless it names a host; HTTPS unverified,
                       as kubelet): 200 when it passes, else 503 and why.
  --exit-with-app      for the classic sidecar of a Job: once every process
                       of the app has exited, drain and exit 0 as on
                       SIGTERM. Needs shareProcessNamespace: true (the
                       sidecar looks at the pod's processes in /proc
                       every 100 ms; an app that ends within 100 ms of
                       its start may not be seen, and the sidecar stays).

Each is also read from the environment, MESHGATE_APP_PROBES and
MESHGATE_EXIT_WITH_APP=true; the flag wins.`

func runProxy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("proxy", "[--config FILE] [--log-level LEVEL] [--cert-dir DIR | --ca-server ADDR ... | --workload-api ADDR] [--mtls-mode MODE] [--mesh-cidrs LIST]", proxyDescription, stderr)
	configPath := fs.String("config", "", "YAML config `file` (default: none, the defaults above)")
	logLevel := fs.String("log-level", "", "log `level`: debug, info, warn or error (overrides logLevel in the config; default info)")
	mtlsMode := fs.String("mtls-mode", "", "`mode` of mesh mTLS: strict, permissive or disable (overrides mtls.mode)")
	meshCIDRs := fs.String("mesh-cidrs", "", "comma-separated `CIDRs` of the destinations that run a sidecar, e.g. 10.0.0.0/8,fd00::/8 (overrides mtls.meshCIDRs)")
	dnsListen := fs.String("dns-listen", "127.0.0.1:15053,[::1]:15053", "serve the DNS proxy on these comma-separated `ADDRS` (UDP and TCP; an IPv6 one is skipped where the namespace has no IPv6); empty: no DNS proxy")
	resolvConf := fs.String("resolv-conf", "/etc/resolv.conf", "ask the resolvers of `FILE` the names outside the mesh")
	registryPath := fs.String("registry", "", "answer the mesh names of the registry `FILE` (YAML: services with endpoints, ports, identity)")
	gcPercent := fs.Int("gc-percent", 0, fmt.Sprintf("garbage collection target in `percent`, as GOGC (which wins when set); 0: %d; -1: off, with --memory-limit", sidecar.DefaultGCPercent))
	memoryLimit := fs.String("memory-limit", "", "soft limit of the Go runtime's memory in `bytes`, as GOMEMLIMIT (which wins when set), e.g. 64MiB; empty: none")
	appProbes := fs.String("app-probes", "", "serve the app's original probes on the health port: `JSON` mapping /app-health/... paths to Kubernetes probe handlers (default: $MESHGATE_APP_PROBES)")
	exitWithApp := fs.Bool("exit-with-app", false, "drain and exit 0 once every process of the app has exited; needs a shared PID namespace (default: $MESHGATE_EXIT_WITH_APP)")
	var certs certFlags
	certs.add(fs)
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}

	cfg := proxy.DefaultConfig()
	if *configPath != "" {
		var err error
		if cfg, err = proxy.LoadConfig(*configPath); err != nil {
			return err
		}
	}
	var problems []error
	if *logLevel != "" {
		cfg.LogLevel = *logLevel
	}
	if *mtlsMode != "" {
		switch m := proxy.MTLSMode(*mtlsMode); m {
		case proxy.MTLSStrict, proxy.MTLSPermissive, proxy.MTLSDisable:
			cfg.MTLS.Mode = m
		default:
			problems = append(problems, fmt.Errorf("--mtls-mode %q: want strict, permissive or disable", *mtlsMode))
		}
	}
	if flagSet(fs, "mesh-cidrs") {
		prefixes, err := netlist.ParseCIDRs(*meshCIDRs)
		if err != nil {
			problems = append(problems, netlist.Named("--mesh-cidrs", err)...)
		}
		cfg.MTLS.MeshCIDRs = prefixes
	}
	problems = append(problems, certs.check()...)
	o := sidecar.Options{
		Config:             cfg,
		ConfigFile:         *configPath,
		Certs:              certs.certs(),
		ResolvConf:         *resolvConf,
		ResolvConfRequired: flagSet(fs, "resolv-conf"),
	}
	var err error
	if o.AppProbes, err = appProbesOf(fs, *appProbes); err != nil {
		problems = append(problems, err)
	}
	if o.ExitWithApp, err = exitWithAppOf(fs, *exitWithApp); err != nil {
		problems = append(problems, err)
	}
	if *dnsListen != "" {
		o.DNSListen = strings.Split(*dnsListen, ",")
	}
	o.GC.Percent = *gcPercent
	if *memoryLimit != "" {
		var err error
		if o.GC.MemoryLimit, err = sidecar.ParseBytes(*memoryLimit); err != nil {
			problems = append(problems, fmt.Errorf("--memory-limit %w", err))
		}
	}
	if *registryPath != "" {
		var err error
		if o.Registry, err = sidecar.LoadRegistry(*registryPath); err != nil {
			problems = append(problems, err)
		}
	}
	if err := o.Validate(); err != nil {
		problems = append(problems, err)
	}
	log, stopLog, err := newProxyLogger(cfg.LogLevel)
	if err != nil {
		problems = append(problems, err)
	}
	if len(problems) > 0 {
		if stopLog != nil {
			stopLog()
		}
		return errors.Join(problems...)
	}
	defer stopLog()
	o.Log = log
	return sidecar.Run(ctx, o)
}

// appProbesOf parses --app-probes, or MESHGATE_APP_PROBES when the flag
// is not given; its error names the one it read.
func appProbesOf(fs *flag.FlagSet, flagValue string) (appprobe.Set, error) {
	src, data := "--app-probes", flagValue
	if !flagSet(fs, "app-probes") {
		src, data = "MESHGATE_APP_PROBES", os.Getenv("MESHGATE_APP_PROBES")
	}
	if strings.TrimSpace(data) == "" {
		return nil, nil
	}
	set, err := appprobe.Parse([]byte(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	return set, nil
}

// exitWithAppOf is --exit-with-app, or MESHGATE_EXIT_WITH_APP when the
// flag is not given.
func exitWithAppOf(fs *flag.FlagSet, flagValue bool) (bool, error) {
	if flagSet(fs, "exit-with-app") {
		return flagValue, nil
	}
	v := strings.TrimSpace(os.Getenv("MESHGATE_EXIT_WITH_APP"))
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("MESHGATE_EXIT_WITH_APP %q: want true or false", v)
	}
	return b, nil
}
