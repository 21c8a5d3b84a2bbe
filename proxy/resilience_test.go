package proxy

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest/observer"

	"meshgate/proxy/resilience"
)

// TestResilienceReload: the resilience section is compiled at New and
// swapped by a reload of the config file; a file whose resilience section
// is bad, or whose other sections cannot be put in effect, changes
// nothing (all or nothing); with the section gone, the built-in defaults
// are back.
func TestResilienceReload(t *testing.T) {
	if !reflect.DeepEqual(DefaultConfig().Resilience, resilience.Config{}) {
		t.Errorf("DefaultConfig sets resilience: %+v", DefaultConfig().Resilience)
	}
	cfg := testConfig()
	cfg.Resilience.Destinations = []resilience.Destination{{
		Name:  "api-v1",
		Match: &resilience.Match{Hosts: []string{"api.shop.mesh"}},
	}}
	p := newProxy(t, cfg)
	dst := resilience.Dest{Names: []string{"api.shop.mesh"}, IP: netip.MustParseAddr("10.0.0.7"), Port: 8080}
	if got := p.resilienceTable().Lookup(dst).Key(); got != "api-v1" {
		t.Fatalf("at New: %s; want api-v1", got)
	}

	write := watchConfigFile(t, p.Proxy)
	reloads := func() int { return p.logs.FilterMessage("config reloaded").Len() }
	refusals := func() []observer.LoggedEntry {
		return p.logs.FilterMessage("config reload refused: the running config stays").All()
	}

	// A new section: in effect, in /config, and not a restart.
	write(`
resilience:
  destinations:
  - name: api-v2
    match: {hosts: [api.shop.mesh], ports: [8080]}
    retries: {attempts: 4, on: [connect-failure, 502]}
`)
	waitFor(t, func() bool { return reloads() == 1 })
	v2 := p.resilienceTable()
	d := v2.Lookup(dst)
	if d.Key() != "api-v2" || d.Policy().Retry.Attempts != 4 || !d.Policy().Retry.On.Statuses.Has(502) {
		t.Fatalf("after the reload: %s %+v", d.Key(), d.Policy().Retry)
	}
	p.cfgMu.Lock()
	shown := p.cfg.Resilience
	p.cfgMu.Unlock()
	if len(shown.Destinations) != 1 || shown.Destinations[0].Name != "api-v2" {
		t.Errorf("/config shows %+v", shown)
	}
	if n := p.logs.FilterMessage("config sections changed that take effect only on restart; they keep their running values").Len(); n != 0 {
		t.Errorf("resilience reported as needing a restart")
	}

	// A bad resilience section: refused with its field path; nothing
	// changes.
	write(`
resilience:
  destinations:
  - name: api-v3
    match: {hosts: [api.shop.mesh]}
    retries: {attempts: 11}
`)
	waitFor(t, func() bool { return len(refusals()) == 1 })
	if got := field(refusals()[0], "problems"); !strings.Contains(got, "resilience.destinations[0].retries.attempts: 11: want 0 (no retries) to 10") {
		t.Errorf("refusal names %s", got)
	}
	if p.resilienceTable() != v2 {
		t.Error("a bad section replaced the table")
	}

	// A good resilience section in a file whose access section cannot be
	// put in effect: refused whole, the table stays.
	write(`
resilience:
  destinations:
  - name: api-v4
    match: {hosts: [api.shop.mesh]}
access:
  ipLists:
  - {name: x, action: deny, files: [/nonexistent/list.txt]}
`)
	waitFor(t, func() bool { return len(refusals()) == 2 })
	if p.resilienceTable() != v2 || p.resilienceTable().Lookup(dst).Key() != "api-v2" {
		t.Errorf("a refused reload replaced the table: %s", p.resilienceTable().Lookup(dst).Key())
	}
	p.cfgMu.Lock()
	shown = p.cfg.Resilience
	p.cfgMu.Unlock()
	if shown.Destinations[0].Name != "api-v2" {
		t.Errorf("/config shows %s after a refused reload", shown.Destinations[0].Name)
	}
	if n := reloads(); n != 1 {
		t.Errorf("%d reloads; want 1", n)
	}

	// The section gone: the built-in defaults.
	write("logLevel: info\n")
	waitFor(t, func() bool { return reloads() == 2 })
	if d := p.resilienceTable().Lookup(dst); !d.IsDefault() || d.Policy().Retry.Attempts != resilience.DefaultAttempts {
		t.Errorf("without the section: %s, %d attempts", d.Key(), d.Policy().Retry.Attempts)
	}
}

// TestResilienceConfigErrors: the resilience section's problems are named
// with their field paths by Config.Validate, with the other sections',
// and New refuses them.
func TestResilienceConfigErrors(t *testing.T) {
	cfg, err := ParseConfig([]byte(`
logLevel: loud
resilience:
  destinations:
  - match: {hosts: [api.shop.mesh]}
    routes:
    - match: {paths: ["/api/*"]}
      retries: {on: [connect-failure, reset, "5xx"]}
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Outbound.Port, cfg.Inbound.Port = 0, 0
	want := []string{
		`logLevel: "loud" is not a level; want debug, info, warn or error`,
		`resilience.destinations[0].routes[0].retries.on[2]: "5xx" is not a condition; want connect-failure, reset, a status code 429 or 500-599 such as "503", or a gRPC code such as unavailable`,
	}
	err = cfg.Validate()
	if err == nil || err.Error() != strings.Join(want, "\n") {
		t.Errorf("Validate:\n%v\nwant:\n%s", err, strings.Join(want, "\n"))
	}
	if _, err := New(cfg, nil); err == nil || !strings.Contains(err.Error(), want[1]) {
		t.Errorf("New: %v", err)
	}
}
