package jwtauth_test

import (
	"context"
	"testing"
	"time"

	"meshgate/proxy/jwtauth"
	"meshgate/proxy/jwtauth/jwtauthtest"
)

func TestSet(t *testing.T) {
	dir := t.TempDir()
	ka := jwtauthtest.NewKey(t, "RS256", "a1")
	kb := jwtauthtest.NewKey(t, "ES256", "b1")
	clk := newClock()
	newProvider := func(name, iss string, k *jwtauthtest.Key) *jwtauth.Provider {
		p, err := jwtauth.New(jwtauth.Options{
			Name:     name,
			Issuer:   iss,
			JWKSFile: writeFile(t, dir, name+".json", jwtauthtest.JWKS(k)),
			Now:      clk.Now,
		})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	pa := newProvider("a", "https://a.example", ka)
	pb := newProvider("b", "https://b.example", kb)
	set, err := jwtauth.NewSet(pa, pb)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		token    string
		want     string
		provider *jwtauth.Provider
	}{
		{"issuer a", ka.Sign(t, claims(t0, "iss", "https://a.example")), "", pa},
		{"issuer b", kb.Sign(t, claims(t0, "iss", "https://b.example")), "", pb},
		{"a's key claiming b", ka.Sign(t, claims(t0, "iss", "https://b.example")),
			`unknown-kid: provider "b" has no key with kid "a1"`, pb},
		{"b's key without kid claiming a", (&jwtauthtest.Key{Alg: "ES256", Signer: kb.Signer}).Sign(t, claims(t0, "iss", "https://a.example")),
			`alg-refused: token has no kid and provider "a" has no key for alg ES256`, pa},
		{"expired", ka.Sign(t, claims(t0, "iss", "https://a.example", "exp", t0.Add(-2*time.Minute).Unix())),
			"expired: token expired at 2026-12-06T13:58:00Z (clock skew 1m0s)", pa},
		{"unknown issuer", ka.Sign(t, claims(t0, "iss", "https://c.example")),
			`unknown-issuer: no provider for issuer "https://c.example"`, nil},
		{"issuer not a string", rawToken(`{"alg":"RS256"}`, `{"iss":["https://a.example"]}`, nil),
			`malformed: claim "iss" is not a string`, nil},
		{"no issuer", ka.Sign(t, claims(t0, "iss", absent)), `unknown-issuer: token has no "iss" claim`, nil},
		{"alg none", jwtauthtest.SignNone(claims(t0, "iss", "https://a.example")),
			`alg-refused: alg "none" is not accepted (want one of ` + accepted + `)`, nil},
		{"malformed", "a.b", "malformed: token is not three dot-separated parts (header.payload.signature)", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, p, err := set.Verify(context.Background(), tt.token)
			wantErr(t, err, tt.want)
			if p != tt.provider {
				t.Errorf("provider %v, want %v", p, tt.provider)
			}
			if err == nil && c.Issuer != p.Issuer() {
				t.Errorf("claims of issuer %q from provider of %q", c.Issuer, p.Issuer())
			}
		})
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		set.Run(ctx)
	}()
	cancel()
	<-done
}

func TestNewSet(t *testing.T) {
	k := jwtauthtest.NewKey(t, "EdDSA", "k")
	path := writeFile(t, t.TempDir(), "jwks.json", jwtauthtest.JWKS(k))
	newProvider := func(name string) *jwtauth.Provider {
		p, err := jwtauth.New(jwtauth.Options{Name: name, Issuer: issuer, JWKSFile: path})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	_, err := jwtauth.NewSet(newProvider("one"), newProvider("two"))
	want := `jwtauth: providers "one" and "two" share issuer "https://issuer.example"`
	if err == nil || err.Error() != want {
		t.Errorf("NewSet: got %v, want %s", err, want)
	}
	_, err = jwtauth.NewSet(newProvider("one"), nil)
	want = "jwtauth: provider 1 is nil"
	if err == nil || err.Error() != want {
		t.Errorf("NewSet: got %v, want %s", err, want)
	}
	s, err := jwtauth.NewSet()
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = s.Verify(context.Background(), k.Sign(t, claims(t0)))
	wantErr(t, err, `unknown-issuer: no provider for issuer "https://issuer.example"`)
}
