package jwtauth_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"meshgate/proxy/jwtauth"
	"meshgate/proxy/jwtauth/jwtauthtest"
)

// TestRotation: a token with a kid the JWKS does not have yet is refused
// after a refresh; once the issuer publishes the key, the next token
// with it makes a refresh that picks it up.
func TestRotation(t *testing.T) {
	k1 := jwtauthtest.NewKey(t, "RS256", "k1")
	k2 := jwtauthtest.NewKey(t, "ES256", "k2")
	srv := newJWKSServer(t, k1)
	clk := newClock()
	p, _ := urlProvider(t, srv, clk)
	ctx := context.Background()

	if srv.fetches.Load() != 0 {
		t.Fatal("New fetched")
	}
	_, err := p.Verify(ctx, k1.Sign(t, claims(clk.Now())))
	wantErr(t, err, "")
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches for the first Verify, want 1", n)
	}

	clk.Advance(10 * time.Second)
	_, err = p.Verify(ctx, k2.Sign(t, claims(clk.Now())))
	wantErr(t, err, `unknown-kid: provider "test" has no key with kid "k2"`)
	if n := srv.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches after an unknown kid, want 2", n)
	}

	srv.serve(http.StatusOK, jwtauthtest.JWKS(k2))
	clk.Advance(jwtauth.DefaultMinRefreshInterval)
	_, err = p.Verify(ctx, k2.Sign(t, claims(clk.Now())))
	wantErr(t, err, "")
	if n := srv.fetches.Load(); n != 3 {
		t.Fatalf("%d fetches after the rotation, want 3", n)
	}
	// k1 is no longer listed but retained.
	_, err = p.Verify(ctx, k1.Sign(t, claims(clk.Now())))
	wantErr(t, err, "")
}

// TestKidMissRateLimit: a burst of tokens with an unknown kid makes one
// fetch, and no other for MinRefreshInterval.
func TestKidMissRateLimit(t *testing.T) {
	k1 := jwtauthtest.NewKey(t, "EdDSA", "k1")
	srv := newJWKSServer(t, k1)
	srv.delay = 50 * time.Millisecond // so that the burst overlaps the fetch
	clk := newClock()
	p, _ := urlProvider(t, srv, clk)
	ctx := context.Background()
	if _, err := p.Verify(ctx, k1.Sign(t, claims(clk.Now()))); err != nil {
		t.Fatal(err)
	}
	forged := jwtauthtest.NewKey(t, "EdDSA", "made-up").Sign(t, claims(clk.Now()))

	burst := func() {
		t.Helper()
		var wg sync.WaitGroup
		for range 100 {
			wg.Go(func() {
				_, err := p.Verify(ctx, forged)
				if err == nil || err.(*jwtauth.Error).Reason != jwtauth.ReasonUnknownKid {
					t.Errorf("got %v, want unknown-kid", err)
				}
			})
		}
		wg.Wait()
	}
	clk.Advance(10 * time.Second)
	burst()
	if n := srv.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches after a burst of misses, want 2", n)
	}
	clk.Advance(jwtauth.DefaultMinRefreshInterval - time.Second)
	burst()
	if n := srv.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches after a second burst within minRefreshInterval, want still 2", n)
	}
	clk.Advance(time.Second)
	burst()
	if n := srv.fetches.Load(); n != 3 {
		t.Fatalf("%d fetches after a burst past minRefreshInterval, want 3", n)
	}
}

// TestKeyRetention: a key the JWKS drops stays valid for KeyRetention,
// then is refused.
func TestKeyRetention(t *testing.T) {
	k1 := jwtauthtest.NewKey(t, "ES384", "k1")
	k2 := jwtauthtest.NewKey(t, "ES384", "k2")
	srv := newJWKSServer(t, k1)
	clk := newClock()
	p, logs := urlProvider(t, srv, clk)
	ctx := context.Background()
	verify := func(k *jwtauthtest.Key) error {
		_, err := p.Verify(ctx, k.Sign(t, claims(clk.Now())))
		return err
	}
	wantErr(t, verify(k1), "")

	srv.serve(http.StatusOK, jwtauthtest.JWKS(k2))
	clk.Advance(time.Minute)
	wantErr(t, verify(k2), "") // a miss: the refresh drops k1 from the JWKS
	dropped := clk.Now()
	wantErr(t, verify(k1), "")

	// A refresh meanwhile keeps k1, and does not extend its retention.
	clk.Advance(jwtauth.DefaultKeyRetention / 2)
	wantErr(t, verify(jwtauthtest.NewKey(t, "ES384", "k3")), `unknown-kid: provider "test" has no key with kid "k3"`)
	wantErr(t, verify(k1), "")

	clk.Advance(jwtauth.DefaultKeyRetention/2 - time.Second)
	wantErr(t, verify(k1), "")
	clk.Advance(time.Second)
	wantErr(t, verify(k1), `unknown-kid: provider "test" has no key with kid "k1"`)
	wantErr(t, verify(k2), "")
	if n := srv.fetches.Load(); n != 4 {
		t.Errorf("%d fetches, want 4", n)
	}

	var got []string
	for _, e := range logs.FilterMessage("jwks refreshed").All() {
		f := e.ContextMap()
		got = append(got, fmt.Sprintf("%v %v %v %v %v %v", e.Level, f["trigger"], f["keys"], f["added"], f["retained"], f["dropped"]))
	}
	want := []string{
		"info key-miss 1 1 0 0",  // k1
		"info key-miss 2 1 1 0",  // k2 new, k1 retained
		"debug key-miss 2 0 0 0", // the JWKS did not change
		"info key-miss 1 0 0 1",  // k1 dropped, at dropped+KeyRetention
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("refresh logs (-want +got), dropped at %v:\n%s", dropped, diff)
	}
}

// TestRefreshFailureKeepsKeys: a refresh that fails keeps the keys, and
// is logged.
func TestRefreshFailureKeepsKeys(t *testing.T) {
	k1 := jwtauthtest.NewKey(t, "PS256", "k1")
	k2 := jwtauthtest.NewKey(t, "PS256", "k2")
	srv := newJWKSServer(t, k1)
	clk := newClock()
	p, logs := urlProvider(t, srv, clk)
	ctx := context.Background()
	wantErr(t, verifyErr(t, p, k1, clk), "")

	for i, bad := range []struct {
		status int
		body   string
		log    string
	}{
		{http.StatusInternalServerError, "oops", "GET " + srv.URL() + ": status 500 Internal Server Error"},
		{http.StatusOK, "<html>", `not a JWKS: not a JSON object with a "keys" array`},
		{http.StatusOK, `{"keys":[]}`, "no usable public signature key"},
		{http.StatusOK, `{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"k2"}]}`,
			`no usable public signature key (ignored keys[0] (kid "k2"): symmetric key (kty "oct"))`},
	} {
		srv.serve(bad.status, []byte(bad.body))
		clk.Advance(time.Minute)
		logs.TakeAll()
		_, err := p.Verify(ctx, k2.Sign(t, claims(clk.Now())))
		wantErr(t, err, `unknown-kid: provider "test" has no key with kid "k2"`)
		wantErr(t, verifyErr(t, p, k1, clk), "")
		if n := srv.fetches.Load(); n != int64(i+2) {
			t.Errorf("%d fetches, want %d", n, i+2)
		}
		failed := logs.FilterMessage("jwks refresh failed; keeping the keys there were").All()
		if len(failed) != 1 || failed[0].Level != zapcore.WarnLevel || failed[0].ContextMap()["error"] != bad.log {
			t.Errorf("failure logs %+v, want one warning with error %q", failed, bad.log)
		}
	}
}

func verifyErr(t *testing.T, p *jwtauth.Provider, k *jwtauthtest.Key, clk *clock) error {
	t.Helper()
	_, err := p.Verify(context.Background(), k.Sign(t, claims(clk.Now())))
	return err
}

// TestNoKeys: a URL provider whose JWKS cannot be fetched has no keys; it
// tries again at most once per MinRefreshInterval.
func TestNoKeys(t *testing.T) {
	k1 := jwtauthtest.NewKey(t, "ES256", "k1")
	srv := newJWKSServer(t)
	srv.serve(http.StatusServiceUnavailable, nil)
	clk := newClock()
	p, _ := urlProvider(t, srv, clk)
	const noKeys = `no-keys: provider "test" has no keys to verify with (its JWKS could not be read)`
	wantErr(t, verifyErr(t, p, k1, clk), noKeys)
	wantErr(t, verifyErr(t, p, k1, clk), noKeys)
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}
	srv.serve(http.StatusOK, jwtauthtest.JWKS(k1))
	wantErr(t, verifyErr(t, p, k1, clk), noKeys) // rate limited
	clk.Advance(jwtauth.DefaultMinRefreshInterval)
	wantErr(t, verifyErr(t, p, k1, clk), "")
	if n := srv.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
}

// TestMissWaitBounded: Verify waits for a slow refresh no longer than its
// ctx allows, nor than the cap; the refresh lands its keys afterwards.
func TestMissWaitBounded(t *testing.T) {
	k1 := jwtauthtest.NewKey(t, "ES256", "k1")
	srv := newJWKSServer(t, k1)
	gate := make(chan struct{})
	srv.gate = gate
	clk := newClock()
	p, _ := urlProvider(t, srv, clk)
	t.Cleanup(func() {
		select {
		case <-gate:
		default:
			close(gate)
		}
	})
	const noKeys = `no-keys: provider "test" has no keys to verify with (its JWKS could not be read)`

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := p.Verify(ctx, k1.Sign(t, claims(clk.Now())))
	wantErr(t, err, noKeys)
	if d := time.Since(start); d > time.Second {
		t.Errorf("Verify with a 50ms ctx took %v", d)
	}

	jwtauth.SetMissWait(p, 50*time.Millisecond)
	start = time.Now()
	wantErr(t, verifyErr(t, p, k1, clk), noKeys) // joins the same refresh
	if d := time.Since(start); d > time.Second {
		t.Errorf("Verify with a 50ms cap took %v", d)
	}
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}

	close(gate)
	jwtauth.WaitRefresh(p)
	wantErr(t, verifyErr(t, p, k1, clk), "")
}

// TestRunURL: Run fetches at once, then every RefreshInterval, and
// returns when its ctx is done.
func TestRunURL(t *testing.T) {
	k1 := jwtauthtest.NewKey(t, "RS256", "k1")
	k2 := jwtauthtest.NewKey(t, "RS256", "k2")
	srv := newJWKSServer(t, k1)
	clk := newClock()
	p, err := jwtauth.New(jwtauth.Options{
		Name:               "test",
		Issuer:             issuer,
		JWKSURL:            srv.URL(),
		RefreshInterval:    20 * time.Millisecond,
		MinRefreshInterval: time.Hour, // only Run refreshes
		Now:                clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx)
	}()
	waitFor(t, func() bool { return verifyErr(t, p, k1, clk) == nil })
	srv.serve(http.StatusOK, jwtauthtest.JWKS(k2))
	waitFor(t, func() bool { return verifyErr(t, p, k2, clk) == nil })
	if n := srv.fetches.Load(); n < 2 {
		t.Errorf("%d fetches, want at least 2", n)
	}
	cancel()
	<-done
	n := srv.fetches.Load()
	time.Sleep(50 * time.Millisecond)
	if m := srv.fetches.Load(); m != n {
		t.Errorf("%d fetches after Run returned", m-n)
	}
}

// TestRunFile: Run re-reads a changed file; a broken file keeps the keys.
func TestRunFile(t *testing.T) {
	k1 := jwtauthtest.NewKey(t, "EdDSA", "k1")
	k2 := jwtauthtest.NewKey(t, "EdDSA", "k2")
	path := writeFile(t, t.TempDir(), "jwks.json", jwtauthtest.JWKS(k1))
	clk := newClock()
	core, logs := observer.New(zapcore.InfoLevel)
	p, err := jwtauth.New(jwtauth.Options{
		Name:               "test",
		Issuer:             issuer,
		JWKSFile:           path,
		RefreshInterval:    10 * time.Millisecond,
		MinRefreshInterval: time.Hour,
		Now:                clk.Now,
		Log:                zap.New(core),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { p.Run(ctx) })
	defer wg.Wait()
	defer cancel()

	wantErr(t, verifyErr(t, p, k2, clk), `unknown-kid: provider "test" has no key with kid "k2"`)
	if err := os.WriteFile(path, jwtauthtest.JWKS(k2), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return verifyErr(t, p, k2, clk) == nil })
	wantErr(t, verifyErr(t, p, k1, clk), "") // retained

	if err := os.WriteFile(path, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return logs.FilterMessage("jwks refresh failed; keeping the keys there were").Len() > 0 })
	wantErr(t, verifyErr(t, p, k2, clk), "")
	if n := logs.FilterMessage("jwks refreshed").Len(); n != 1 {
		t.Errorf("%d info logs of a changed key set, want 1", n)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
