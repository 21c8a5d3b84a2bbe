package appprobe

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"net/url"
	"path"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// PathPrefix is where every app probe path lives on the health port.
const PathPrefix = "/app-health/"

// DefaultHost is the address probes go to when they name no host: the
// app, inside the pod.
const DefaultHost = "127.0.0.1"

// Set maps a path of the health port (under PathPrefix) to the app's
// original probe that answers it.
type Set map[string]Probe

// Probe is one original probe: the handler fields of a Kubernetes Probe
// (exactly one of HTTPGet, GRPC and TCPSocket), named ports resolved to
// numbers, and its timeout.
type Probe struct {
	HTTPGet   *HTTPGet   `json:"httpGet,omitempty"`
	GRPC      *GRPC      `json:"grpc,omitempty"`
	TCPSocket *TCPSocket `json:"tcpSocket,omitempty"`
	// TimeoutSeconds bounds one run of the probe; 0 means 1, as in
	// Kubernetes.
	TimeoutSeconds int `json:"timeoutSeconds,omitempty"`
}

// HTTPGet is a Kubernetes HTTPGetAction.
type HTTPGet struct {
	// Path is the request path (and query); empty means "/".
	Path string `json:"path,omitempty"`
	Port int    `json:"port"`
	// Host is the address or name to connect to; empty: DefaultHost.
	Host string `json:"host,omitempty"`
	// Scheme is HTTP (default) or HTTPS; HTTPS does not verify the app's
	// certificate, as kubelet does not.
	Scheme      string   `json:"scheme,omitempty"`
	HTTPHeaders []Header `json:"httpHeaders,omitempty"`
}

// Header is a Kubernetes HTTPHeader.
type Header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// GRPC is a Kubernetes GRPCAction: the grpc.health.v1 Check of Service
// (empty: the server as a whole), without TLS.
type GRPC struct {
	Port    int     `json:"port"`
	Service *string `json:"service,omitempty"`
}

// TCPSocket is a Kubernetes TCPSocketAction: it passes when a connection
// is made.
type TCPSocket struct {
	Port int    `json:"port"`
	Host string `json:"host,omitempty"`
}

// Timeout is the probe's time limit.
func (p Probe) Timeout() time.Duration {
	if p.TimeoutSeconds <= 0 {
		return time.Second
	}
	return time.Duration(p.TimeoutSeconds) * time.Second
}

// Kind names the probe's handler: httpGet, grpc or tcpSocket.
func (p Probe) Kind() string {
	switch {
	case p.HTTPGet != nil:
		return "httpGet"
	case p.GRPC != nil:
		return "grpc"
	case p.TCPSocket != nil:
		return "tcpSocket"
	}
	return "none"
}

// Parse reads the JSON of MESHGATE_APP_PROBES (an object mapping each path
// to its probe) strictly, and validates every entry. Its error lists every
// problem at once (errors.Join), each naming the entry's path; the caller
// adds where the JSON came from.
func Parse(data []byte) (Set, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("not a JSON object of path to probe: %w", err)
	}
	if raw == nil {
		return nil, errors.New(`not a JSON object of path to probe: want e.g. {"/app-health/web/readyz":{"httpGet":{"path":"/ready","port":8080}}}`)
	}
	set := make(Set, len(raw))
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(raw)) {
		dec := json.NewDecoder(bytes.NewReader(raw[k]))
		dec.DisallowUnknownFields()
		var p Probe
		if err := dec.Decode(&p); err != nil {
			errs = append(errs, fmt.Errorf("entry %q: %s", k, jsonProblem(err)))
			continue
		}
		if err := p.validate(k); err != nil {
			errs = append(errs, err)
			continue
		}
		set[k] = p
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return set, nil
}

// jsonProblem says what encoding/json found wrong, in the probe's terms.
func jsonProblem(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field != "" && strings.HasSuffix(te.Field, "port") && te.Value == "string" {
			return fmt.Sprintf("%s is a string (a named port?): want the port number (meshgate inject resolves named ports)", te.Field)
		}
		if te.Field != "" {
			return fmt.Sprintf("%s: a JSON %s, want %s", te.Field, te.Value, te.Type)
		}
		return fmt.Sprintf("a JSON %s, want an object like {\"httpGet\":{\"path\":\"/ready\",\"port\":8080}}", te.Value)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// Validate checks every entry of s, as Parse does.
func (s Set) Validate() error {
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(s)) {
		errs = append(errs, s[k].validate(k))
	}
	return errors.Join(errs...)
}

func (p Probe) validate(key string) error {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }

	switch rest, ok := strings.CutPrefix(key, PathPrefix); {
	case !ok || rest == "":
		bad("the path must be under %s, e.g. %sweb/readyz", PathPrefix, PathPrefix)
	case path.Clean(key) != key || strings.IndexFunc(key, notPathChar) >= 0:
		bad("the path must be a clean path of letters, digits and - . _ ~ /")
	}
	n := 0
	for _, h := range []bool{p.HTTPGet != nil, p.GRPC != nil, p.TCPSocket != nil} {
		if h {
			n++
		}
	}
	switch n {
	case 0:
		bad("no handler: want one of httpGet, grpc or tcpSocket (exec probes stay with kubelet)")
	case 1:
	default:
		bad("two handlers or more: want exactly one of httpGet, grpc or tcpSocket")
	}
	port := func(field string, v int) {
		if v < 1 || v > 65535 {
			bad("%s.port %d: want 1-65535", field, v)
		}
	}
	host := func(field, h string) {
		if h != "" && !validHost(h) {
			bad("%s.host %q: want an IP address or a host name", field, h)
		}
	}
	if g := p.HTTPGet; g != nil {
		port("httpGet", g.Port)
		host("httpGet", g.Host)
		if g.Scheme != "" && g.Scheme != "HTTP" && g.Scheme != "HTTPS" {
			bad("httpGet.scheme %q: want HTTP or HTTPS", g.Scheme)
		}
		if u, err := url.Parse(g.Path); err != nil || u.Scheme != "" || u.Host != "" {
			bad("httpGet.path %q: want a path like /ready", g.Path)
		}
		for _, h := range g.HTTPHeaders {
			if !httpguts.ValidHeaderFieldName(h.Name) {
				bad("httpGet.httpHeaders: %q is not a header name", h.Name)
			}
			if !httpguts.ValidHeaderFieldValue(h.Value) {
				bad("httpGet.httpHeaders: the value of %s holds characters a header cannot", h.Name)
			}
		}
	}
	if g := p.GRPC; g != nil {
		port("grpc", g.Port)
	}
	if t := p.TCPSocket; t != nil {
		port("tcpSocket", t.Port)
		host("tcpSocket", t.Host)
	}
	if p.TimeoutSeconds < 0 {
		bad("timeoutSeconds %d: want 1 or more (0: the default, 1)", p.TimeoutSeconds)
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("entry %q: %s", key, strings.Join(errs, "; "))
}

func notPathChar(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-._~/", r))
}

// validHost accepts an IP address (without brackets or zone) or a DNS
// name.
func validHost(h string) bool {
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Zone() == ""
	}
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}
