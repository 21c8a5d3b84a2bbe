package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshgate/proxy"
	"meshgate/proxy/policy"
)

const policyDescription = `
Work with the authorization policy of a proxy config (its policy section).

  explain   say what the policy decides of a call, and why, rule by rule

'meshgate policy explain' evaluates offline, from the config file alone;
the running proxy answers the same on its admin port:
  curl 'http://127.0.0.1:15000/explain?from=spiffe://td/ns/shop/sa/web&port=8080&method=GET&path=/x'`

const explainDescription = `
Say what the policy section of --config decides of one call, and why:
the decision, the rule that made it (or the default), the condition that
matched or failed, then every rule of the call's direction with what
each of its conditions found.

An inbound call is from --from (a SPIFFE ID; none: a plaintext client)
and --source-ip to the app's --port. An outbound one (--direction
outbound) is to --port of --to-ip, --to-host and --to-identity. With
--method (or --path or --header) it is an HTTP request; without, a
connection that is not HTTP, which meets no HTTP or JWT condition.
--jwt names a file holding a bearer token, checked against the config's
JWT providers (their JWKS files are read, their URLs fetched).

Exit status: 0 allowed, 1 denied, 2 bad flags or config.

Example:
  meshgate policy explain --config proxy.yaml \
    --from spiffe://cluster.local/ns/shop/sa/web --port 8080 \
    --method POST --path /api/orders --header x-env=prod`

func runPolicy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintf(stderr, "Usage: meshgate policy explain [flags]\n\n%s\n", strings.TrimSpace(policyDescription))
		if len(args) == 0 {
			return errUsage
		}
		return flag.ErrHelp
	}
	switch args[0] {
	case "explain":
		return runPolicyExplain(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "meshgate policy: unknown subcommand %q; want explain\n", args[0])
	return errUsage
}

// errDenied is the exit status of a denied call (1), with the
// explanation already printed.
var errDenied = errors.New("denied")

func runPolicyExplain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("policy explain", "--config FILE --port N [--from ID] [--method M] [--path P] [--header K=V ...] [--jwt FILE]", explainDescription, stderr)
	configPath := fs.String("config", "", "the proxy config `file` whose policy section is explained (required)")
	direction := fs.String("direction", "inbound", "`direction` of the call: inbound (to the app) or outbound (the app's)")
	port := fs.Uint("port", 0, "the app's `port` (inbound) or the destination's (outbound) (required)")
	from := fs.String("from", "", "the caller's SPIFFE `ID` (inbound); empty: a plaintext client")
	sourceIP := fs.String("source-ip", "", "the caller's `address` (inbound)")
	toIP := fs.String("to-ip", "", "the destination's `address` (outbound)")
	toHost := fs.String("to-host", "", "the `name` the app resolved the destination by (outbound)")
	toID := fs.String("to-identity", "", "the SPIFFE `ID` the destination's sidecar presents (outbound)")
	method := fs.String("method", "", "the HTTP `method`; with none (and no --path or --header) the call is not HTTP")
	path := fs.String("path", "", "the request `path`, query included")
	authority := fs.String("authority", "", "the Host header / :authority")
	var headers headerFlags
	fs.Var(&headers, "header", "a request header `name=value` (repeatable)")
	jwtFile := fs.String("jwt", "", "a `file` holding a bearer token")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	var problems []error
	bad := func(format string, a ...any) { problems = append(problems, fmt.Errorf(format, a...)) }
	if *configPath == "" {
		bad("--config: missing; name the proxy config file whose policy to explain")
	}
	if *port == 0 || *port > 65535 {
		bad("--port: want the port the call is made to, 1 to 65535")
	}
	q := proxy.ExplainQuery{Port: uint16(*port), DestHost: *toHost, Method: *method, Path: *path, Authority: *authority, Header: http.Header{}}
	switch *direction {
	case "inbound":
		q.Direction = policy.Inbound
	case "outbound":
		q.Direction = policy.Outbound
	default:
		bad("--direction %q: want inbound or outbound", *direction)
	}
	for flagName, s := range map[string]struct {
		v   string
		dst *spiffeid.ID
	}{"--from": {*from, &q.From}, "--to-identity": {*toID, &q.DestID}} {
		if s.v == "" {
			continue
		}
		id, err := spiffeid.FromString(s.v)
		if err != nil {
			bad("%s %q: not a SPIFFE ID (%v); want e.g. spiffe://cluster.local/ns/shop/sa/web", flagName, s.v, err)
		}
		*s.dst = id
	}
	for flagName, s := range map[string]struct {
		v   string
		dst *netip.Addr
	}{"--source-ip": {*sourceIP, &q.SourceIP}, "--to-ip": {*toIP, &q.DestIP}} {
		if s.v == "" {
			continue
		}
		a, err := netip.ParseAddr(s.v)
		if err != nil {
			bad("%s %q: not an IP address", flagName, s.v)
		}
		*s.dst = a
	}
	for _, h := range headers {
		name, value, err := proxy.ParseExplainHeader(h)
		if err != nil {
			bad("--header %v", err)
			continue
		}
		q.Header.Add(name, value)
	}
	if q.Method == "" && (q.Path != "" || len(headers) > 0 || q.Authority != "") {
		q.Method = http.MethodGet
	}
	if *jwtFile != "" {
		b, err := os.ReadFile(*jwtFile)
		if err != nil {
			bad("--jwt: %v", err)
		}
		q.Token = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(b)), "Bearer "))
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintf(stderr, "meshgate policy explain: %v\n", p)
		}
		return errUsage
	}
	cfg, err := proxy.LoadConfig(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "meshgate policy explain: %v\n", err)
		return errUsage
	}
	res, err := proxy.Explain(ctx, cfg, q)
	if err != nil {
		return err
	}
	res.Format(stdout)
	if !res.Allowed() {
		return errDenied
	}
	return nil
}

// headerFlags collects repeated --header flags.
type headerFlags []string

func (h *headerFlags) String() string     { return strings.Join(*h, ", ") }
func (h *headerFlags) Set(v string) error { *h = append(*h, v); return nil }
