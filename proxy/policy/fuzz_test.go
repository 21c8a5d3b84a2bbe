package policy

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"
)

// FuzzRules: any rules document either fails validation or compiles, and
// deciding and explaining with it never panics; Explain agrees with the
// request path.
func FuzzRules(f *testing.F) {
	f.Add([]byte(shopRules), "GET", "/api/x", "x-debug", "1")
	f.Add([]byte(`
- name: j
  action: allow
  jwt: {issuers: ["https://idp"], claims: {a.b: [x, y]}, not: {audiences: [z]}}
- name: g
  action: deny
  dryRun: true
  http: {grpc: ["a.B/*"], hosts: ["*.example.com"], not: {paths: ["/x/*/y"]}}
- name: o
  action: audit
  direction: outbound
  ports: [443]
  to: {hosts: [a.example.com], cidrs: [10.0.0.0/8], identities: ["spiffe://td/*"]}
`), "POST", "/a.B/C", "content-type", "application/grpc")
	f.Add([]byte(`- {name: h, action: deny, http: {headers: {x-a: {regex: "a+b"}, x-b: {present: false}}}}`), "GET", "/%2e%2e/x", "x-a", "aab")
	f.Fuzz(func(t *testing.T, doc []byte, method, target, hname, hval string) {
		// Anchors and aliases make the YAML library slow on purpose-built
		// input (exponential expansion); what is fuzzed here is the
		// rules, not the YAML parser.
		if len(doc) > 16<<10 || bytes.IndexByte(doc, '&') >= 0 {
			return
		}
		var rules []Rule
		if err := yaml.UnmarshalStrict(doc, &rules); err != nil {
			return
		}
		if err := Validate("policy.rules", rules, Issuers{"https://idp": true}); err != nil {
			return
		}
		e, err := Compile(rules, Options{})
		if err != nil {
			t.Fatalf("valid rules do not compile: %v", err)
		}
		r := req{method: method, target: target, authority: "a.example.com:80", headers: map[string]string{strings.ToLower(hname): hval}}
		cl := claims{"iss": "https://idp", "a": map[string]any{"b": []any{"x"}}}
		for _, c := range []Conn{
			in(8080, web, "10.0.0.1"),
			in(443, spiffeid.ID{}, "192.0.2.1"),
			{Dir: Outbound, Port: 443, DestIP: netip.MustParseAddr("10.1.2.3"), DestHost: "a.example.com", DestID: batch},
		} {
			d := e.Connection(c)
			var got Decision
			switch {
			case d.Final() != nil:
				got = *d.Final()
			default:
				got = d.Request(r, cl)
				d.Opaque()
			}
			tr := e.Explain(c, r, cl)
			if tr.Decision.Allowed != got.Allowed || tr.Decision.RuleName() != got.RuleName() {
				t.Fatalf("explain decided %v by %s; the request path %v by %s", tr.Decision.Allowed, tr.Decision.RuleName(), got.Allowed, got.RuleName())
			}
			if !got.Allowed && got.Reason == "" {
				t.Fatalf("a denial without a reason")
			}
			var b strings.Builder
			tr.Format(&b)
		}
	})
}

// FuzzNormalizePath: the normalised path starts with '/', has no empty,
// "." or ".." segment, and normalising it again changes nothing.
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/a/b", "/a/../b", "/a%2F..%2Fb", "//x", "http://h/p?q", "/a/./b/", "\\..\\x", "%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p := NormalizePath(s)
		if !strings.HasPrefix(p, "/") {
			t.Fatalf("NormalizePath(%q) = %q: no leading slash", s, p)
		}
		if q := NormalizePath(p); q != p && !strings.ContainsAny(p, "%\\?#") {
			t.Fatalf("NormalizePath(%q) = %q, again %q", s, p, q)
		}
		for i, seg := range strings.Split(p[1:], "/") {
			last := i == strings.Count(p[1:], "/")
			if seg == "." || seg == ".." || (seg == "" && !last && p != "/") {
				t.Fatalf("NormalizePath(%q) = %q: segment %q", s, p, seg)
			}
		}
	})
}
