package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"

	"meshgate/proxy"
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
	if *configPath == "" {
		problems = append(problems, errors.New("--config: missing; name the proxy config file whose policy to explain"))
	}
	v := url.Values{"direction": {*direction}, "port": {strconv.FormatUint(uint64(*port), 10)}, "header": []string(headers)}
	for k, s := range map[string]string{"from": *from, "source-ip": *sourceIP, "to-ip": *toIP, "to-host": *toHost,
		"to-identity": *toID, "method": *method, "path": *path, "authority": *authority} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if *jwtFile != "" {
		b, err := os.ReadFile(*jwtFile)
		if err != nil {
			problems = append(problems, fmt.Errorf("--jwt: %v", err))
		}
		v.Set("token", strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(b)), "Bearer ")))
	}
	q, err := proxy.ParseExplainQuery(v, func(k string) string { return "--" + k })
	if err != nil {
		problems = append(problems, splitLines(err)...)
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

// splitLines is each problem of a joined error.
func splitLines(err error) []error {
	var out []error
	for _, l := range strings.Split(err.Error(), "\n") {
		out = append(out, errors.New(l))
	}
	return out
}

// headerFlags collects repeated --header flags.
type headerFlags []string

func (h *headerFlags) String() string     { return strings.Join(*h, ", ") }
func (h *headerFlags) Set(v string) error { *h = append(*h, v); return nil }
