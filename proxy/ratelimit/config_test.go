package ratelimit

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"
)

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Rate
		err      string
	}{
		{name: "per second", in: "50/s", want: Rate{50, time.Second}},
		{name: "per minute", in: "600/m", want: Rate{600, time.Minute}},
		{name: "per hour", in: "1/h", want: Rate{1, time.Hour}},
		{name: "per day", in: "1000000000/d", want: Rate{1_000_000_000, Day}},
		{name: "unknown unit", in: "50/x", err: `"50/x": want N/s, N/m, N/h or N/d`},
		{name: "no unit", in: "50", err: `"50": want N/s, N/m, N/h or N/d`},
		{name: "long unit", in: "50/sec", err: `"50/sec": want N/s, N/m, N/h or N/d`},
		{name: "empty", in: "", err: `"": want N/s, N/m, N/h or N/d`},
		{name: "zero", in: "0/s", err: `"0/s": N must be a whole number from 1 to 1000000000, e.g. 50/s`},
		{name: "negative", in: "-5/m", err: `"-5/m": N must be a whole number from 1 to 1000000000, e.g. 50/m`},
		{name: "plus sign", in: "+5/m", err: `"+5/m": N must be a whole number from 1 to 1000000000, e.g. 50/m`},
		{name: "fraction", in: "0.5/s", err: `"0.5/s": N must be a whole number from 1 to 1000000000, e.g. 50/s`},
		{name: "too big", in: "1000000001/s", err: `"1000000001/s": N must be a whole number from 1 to 1000000000, e.g. 50/s`},
		{name: "no number", in: "/s", err: `"/s": N must be a whole number from 1 to 1000000000, e.g. 50/s`},
		{name: "spaces", in: "50 /s", err: `"50 /s": N must be a whole number from 1 to 1000000000, e.g. 50/s`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRate(tc.in)
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("ParseRate(%q) = %v, %v; want error %s", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseRate(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
			if got.String() != tc.in {
				t.Errorf("String() = %q; want %q", got.String(), tc.in)
			}
		})
	}
}

func TestRateJSON(t *testing.T) {
	var r Rate
	if err := yaml.Unmarshal([]byte(`50`), &r); err == nil || err.Error() != `error unmarshaling JSON: while decoding JSON: 50 is not a rate; want N/s, N/m, N/h or N/d, e.g. "50/s"` {
		t.Errorf("number: %v", err)
	}
	if err := yaml.Unmarshal([]byte(`50/x`), &r); err == nil || !strings.HasSuffix(err.Error(), `"50/x": want N/s, N/m, N/h or N/d`) {
		t.Errorf("bad unit: %v", err)
	}
	b, err := json.Marshal(Rate{600, time.Minute})
	if err != nil || string(b) != `"600/m"` {
		t.Errorf("Marshal = %s, %v", b, err)
	}
}

func TestDefaultBurst(t *testing.T) {
	for in, want := range map[string]int{"50/s": 50, "600/m": 10, "601/m": 11, "100/h": 1, "1/d": 1, "1/s": 1} {
		r, _ := ParseRate(in)
		if got := r.DefaultBurst(); got != want {
			t.Errorf("%s: DefaultBurst() = %d; want %d", in, got, want)
		}
	}
}

func TestDecode(t *testing.T) {
	doc := `
- name: per-caller
  direction: inbound
  key: sourceIdentity
  match: {ports: [8080], http: {methods: [GET], paths: ["/api/*"]}}
  rate: 50/s
  burst: 10
  overrides: [{value: "spiffe://td/ns/shop/sa/batch", rate: 200/s}]
  maxKeys: 500
  global: false
`
	var got []Limit
	if err := yaml.UnmarshalStrict([]byte(doc), &got); err != nil {
		t.Fatal(err)
	}
	want := []Limit{{
		Name:      "per-caller",
		Direction: Inbound,
		Key:       SourceIdentity,
		Match:     &Match{Ports: []uint16{8080}, HTTP: &HTTPMatch{Methods: []string{"GET"}, Paths: []string{"/api/*"}}},
		Rate:      Rate{50, time.Second},
		Burst:     10,
		Overrides: []Override{{Value: "spiffe://td/ns/shop/sa/batch", Rate: Rate{200, time.Second}}},
		MaxKeys:   500,
	}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	if err := Validate(got); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestValidate(t *testing.T) {
	doc := `
- name: a
  key: sourceIdentity
  rate: 50/s
- name: a
  direction: sideways
  key: header:x api
  rate: 5/m
  burst: -1
  maxKeys: -3
- key: cookie
  match: {ports: [0, 80, 80], http: {methods: [get], paths: [api, "/a*b", "/ok/*", "/exact"]}}
  overrides: [{value: x, rate: 1/s}, {value: x, rate: 2/s, burst: -2}, {rate: 1/s}, {value: y}]
- name: "bad name!"
  direction: outbound
  key: jwtSubject
  rate: 1/d
  maxKeys: 20000000
  overrides: []
  match: {ports: [], http: {methods: [], paths: []}}
- name: out
  direction: outbound
  key: route
  rate: 10/h
  global: true
`
	var limits []Limit
	if err := yaml.UnmarshalStrict([]byte(doc), &limits); err != nil {
		t.Fatal(err)
	}
	limits = append(limits, Limit{Name: "window", Key: SourceIP, Rate: Rate{N: 5, Window: 2 * time.Second}})
	err := Validate(limits)
	if err == nil {
		t.Fatal("no error")
	}
	want := []string{
		`rateLimits[1].direction: "sideways" is not a direction; want inbound or outbound`,
		`rateLimits[1].key: "x api" is not a header name; want e.g. header:x-api-key`,
		`rateLimits[1].burst: -1: want a positive number, or leave it out for the rate per second`,
		`rateLimits[1].maxKeys: -3: want a positive number, or leave it out for 10000`,
		`rateLimits[1].name: "a" is also rateLimits[0].name; give each limit its own name`,
		`rateLimits[2].name: missing; every limit needs a name, e.g. per-caller`,
		`rateLimits[2].key: "cookie" is not a key; want sourceIdentity, sourceIP, route, jwtSubject or header:NAME`,
		`rateLimits[2].match.ports[0]: 0 is not a port; want a number from 1 to 65535`,
		`rateLimits[2].match.ports[2]: 80 is listed twice`,
		`rateLimits[2].match.http.methods[0]: "get" is not a method; want upper case, e.g. GET`,
		`rateLimits[2].match.http.paths[0]: "api" does not start with /; want e.g. /login or /api/*`,
		`rateLimits[2].match.http.paths[1]: "/a*b" has a * before its end: * only ends a prefix; want e.g. /api/*`,
		`rateLimits[2].rate: missing; want N/s, N/m, N/h or N/d, e.g. 50/s`,
		`rateLimits[2].overrides[1].value: "x" is also overrides[0].value; give each key value one override`,
		`rateLimits[2].overrides[1].burst: -2: want a positive number, or leave it out for the rate per second`,
		`rateLimits[2].overrides[2].value: missing; want the key value this rate is for`,
		`rateLimits[2].overrides[3].rate: missing; want N/s, N/m, N/h or N/d, e.g. 50/s`,
		`rateLimits[3].name: "bad name!": want 1 to 64 letters, digits, '.', '_' or '-'`,
		`rateLimits[3].key: jwtSubject: outbound calls have one caller, the app; key outbound limits by route or header:NAME`,
		`rateLimits[3].match.ports: empty list; remove it to apply the limit to every port`,
		`rateLimits[3].match.http.methods: empty list; remove it to match any method`,
		`rateLimits[3].match.http.paths: empty list; remove it to match any path`,
		`rateLimits[3].maxKeys: 20000000 is more than 10000000; each key value takes memory`,
		`rateLimits[3].overrides: empty list; remove it, or list key values with their own rate`,
		`rateLimits[5].rate: window 2s: want a second, minute, hour or day`,
	}
	got := strings.Split(err.Error(), "\n")
	if d := cmp.Diff(sortedCopy(want), sortedCopy(got)); d != "" {
		t.Errorf("problems (-want +got):\n%s", d)
	}
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

func TestMatch(t *testing.T) {
	m := &Match{Ports: []uint16{8080}, HTTP: &HTTPMatch{Methods: []string{"GET", "HEAD"}, Paths: []string{"/api/*", "/login"}}}
	for _, tc := range []struct {
		port         uint16
		method, path string
		inPort, req  bool
	}{
		{8080, "GET", "/api/items", true, true},
		{8080, "HEAD", "/login", true, true},
		{9090, "GET", "/api/", false, true},
		{8080, "POST", "/api/items", true, false},
		{8080, "GET", "/api", true, false},
		{8080, "GET", "/login/x", true, false},
	} {
		if got := m.Port(tc.port); got != tc.inPort {
			t.Errorf("Port(%d) = %v", tc.port, got)
		}
		if got := m.Request(tc.method, tc.path); got != tc.req {
			t.Errorf("Request(%s %s) = %v", tc.method, tc.path, got)
		}
	}
	var none *Match
	if !none.Port(1) || !none.Request("PUT", "/x") {
		t.Error("an unset match must hold for anything")
	}
}

// TestValidatePer: what a connection limit cannot know is refused with
// the field and the fix.
func TestValidatePer(t *testing.T) {
	for _, tc := range []struct {
		name string
		l    Limit
		want []string
	}{
		{"request by default", Limit{Name: "a", Key: Route, Rate: Rate{1, time.Second}}, nil},
		{"connection by source ip", Limit{Name: "a", Key: SourceIP, Per: PerConnection, Rate: Rate{1, time.Second},
			Match: &Match{Ports: []uint16{8080}}}, nil},
		{"unknown", Limit{Name: "a", Key: SourceIP, Per: "stream", Rate: Rate{1, time.Second}},
			[]string{`rateLimits[0].per: "stream": want request or connection`}},
		{"connection by route", Limit{Name: "a", Key: Route, Per: PerConnection, Rate: Rate{1, time.Second}},
			[]string{"rateLimits[0].key: route: a new connection has no HTTP request to read it from; key a connection limit by sourceIP or sourceIdentity, or set per: request"}},
		{"connection by header", Limit{Name: "a", Key: HeaderKey("x-api-key"), Per: PerConnection, Rate: Rate{1, time.Second}},
			[]string{"rateLimits[0].key: header:x-api-key: a new connection has no HTTP request to read it from; key a connection limit by sourceIP or sourceIdentity, or set per: request"}},
		{"connection with http match", Limit{Name: "a", Key: SourceIP, Per: PerConnection, Rate: Rate{1, time.Second},
			Match: &Match{HTTP: &HTTPMatch{Methods: []string{"GET"}}}},
			[]string{"rateLimits[0].match.http: a connection limit counts connections before any request is read; remove match.http, or set per: request"}},
		{"connection outbound", Limit{Name: "a", Direction: Outbound, Key: Route, Per: PerConnection, Rate: Rate{1, time.Second}},
			[]string{
				"rateLimits[0].per: connection: connection limits are inbound only (a new connection's key is its source); limit the app's calls per request, keyed by route or header:NAME",
				"rateLimits[0].key: route: a new connection has no HTTP request to read it from; key a connection limit by sourceIP or sourceIdentity, or set per: request",
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			if err := Validate([]Limit{tc.l}); err != nil {
				got = strings.Split(err.Error(), "\n")
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Validate (-want +got):\n%s", diff)
			}
		})
	}
}
