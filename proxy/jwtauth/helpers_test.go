package jwtauth_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"meshgate/proxy/jwtauth"
	"meshgate/proxy/jwtauth/jwtauthtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const issuer = "https://issuer.example"

// t0 is when the tests happen, by the providers' clock.
var t0 = time.Date(2026, 12, 6, 14, 0, 0, 0, time.UTC)

// clock is a settable Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: t0} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// absent deletes a claim in claims.
var absent = struct{ absent bool }{true}

// claims are valid claims at now for issuer and audience "api", changed
// by name/value pairs (absent deletes one).
func claims(now time.Time, kv ...any) map[string]any {
	c := map[string]any{
		"iss": issuer,
		"sub": "alice",
		"aud": "api",
		"iat": now.Unix(),
		"exp": now.Add(time.Hour).Unix(),
	}
	for i := 0; i < len(kv); i += 2 {
		name := kv[i].(string)
		if kv[i+1] == absent {
			delete(c, name)
		} else {
			c[name] = kv[i+1]
		}
	}
	return c
}

// writeFile writes data to a file in dir and returns its path.
func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// jwksServer serves a JWKS that tests change, and counts fetches.
type jwksServer struct {
	*httptest.Server
	fetches atomic.Int64
	mu      sync.Mutex
	body    []byte
	status  int
	delay   time.Duration
	gate    chan struct{} // when set, requests wait for it to close
}

func newJWKSServer(t *testing.T, keys ...*jwtauthtest.Key) *jwksServer {
	s := &jwksServer{body: jwtauthtest.JWKS(keys...), status: http.StatusOK}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		body, status, delay, gate := s.body, s.status, s.delay, s.gate
		s.mu.Unlock()
		if gate != nil {
			<-gate
		}
		time.Sleep(delay)
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.WriteHeader(status)
		w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) serve(status int, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.body = status, body
}

func (s *jwksServer) URL() string { return s.Server.URL + "/jwks" }

// urlProvider is a provider of issuer fetching from s, on clk, logging to
// the returned observer.
func urlProvider(t *testing.T, s *jwksServer, clk *clock) (*jwtauth.Provider, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	p, err := jwtauth.New(jwtauth.Options{
		Name:      "test",
		Issuer:    issuer,
		Audiences: []string{"api"},
		JWKSURL:   s.URL(),
		Now:       clk.Now,
		Log:       zap.New(core),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { jwtauth.WaitRefresh(p) })
	return p, logs
}

// wantErr fails t unless err is a *jwtauth.Error whose text is want ("" for
// no error).
func wantErr(t *testing.T, err error, want string) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatalf("got error %v, want none", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("got no error, want %q", want)
	}
	if _, ok := err.(*jwtauth.Error); !ok {
		t.Fatalf("got %T %v, want a *jwtauth.Error", err, err)
	}
	if err.Error() != want {
		t.Fatalf("got error\n\t%s\nwant\n\t%s", err, want)
	}
}
