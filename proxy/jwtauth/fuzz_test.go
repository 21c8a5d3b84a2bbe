package jwtauth_test

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"meshgate/proxy/jwtauth"
	"meshgate/proxy/jwtauth/jwtauthtest"
)

var update = flag.Bool("update", false, "rewrite the FuzzVerify seed corpus in testdata/fuzz/FuzzVerify")

// fuzzKey is the key of the fuzz provider: Ed25519 from a fixed seed, so
// that the committed seed tokens (deterministic Ed25519 signatures) stay
// valid.
func fuzzKey() *jwtauthtest.Key {
	seed := sha256.Sum256([]byte("meshgate jwtauth FuzzVerify"))
	return &jwtauthtest.Key{Alg: "EdDSA", Kid: "fuzz", Signer: ed25519.NewKeyFromSeed(seed[:])}
}

// fuzzProvider is a file-backed provider of fuzzKey whose clock stands at
// t0, and its set.
func fuzzProvider(t testing.TB) (*jwtauth.Provider, *jwtauth.Set) {
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, jwtauthtest.JWKS(fuzzKey()), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := jwtauth.New(jwtauth.Options{
		Name:      "fuzz",
		Issuer:    issuer,
		Audiences: []string{"api"},
		JWKSFile:  path,
		Now:       newClock().Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	s, err := jwtauth.NewSet(p)
	if err != nil {
		t.Fatal(err)
	}
	return p, s
}

// fuzzSeeds are the seed corpus, by file name, and the error each gets
// ("" for none).
func fuzzSeeds(t testing.TB) map[string]struct{ token, want string } {
	k := fuzzKey()
	valid := k.Sign(t, claims(t0))
	parts := strings.Split(valid, ".")
	pub, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return map[string]struct{ token, want string }{
		"valid":         {valid, ""},
		"valid-nested":  {k.Sign(t, claims(t0, "aud", []string{"api", "x"}, "realm_access", map[string]any{"roles": []string{"admin"}})), ""},
		"expired":       {k.Sign(t, claims(t0, "exp", t0.Unix()-3600)), "expired: token expired at 2026-12-06T13:00:00Z (clock skew 1m0s)"},
		"alg-none":      {jwtauthtest.SignNone(claims(t0)), `alg-refused: alg "none" is not accepted (want one of ` + accepted + `)`},
		"hs256-pubkey":  {jwtauthtest.SignHMAC(t, "HS256", pub, "fuzz", claims(t0)), `alg-refused: alg "HS256" is not accepted (want one of ` + accepted + `)`},
		"no-signature":  {parts[0] + "." + parts[1] + ".", `bad-signature: signature does not verify with key "fuzz" of provider "fuzz"`},
		"two-parts":     {parts[0] + "." + parts[1], "malformed: token is not three dot-separated parts (header.payload.signature)"},
		"truncated":     {valid[:len(valid)-7], `bad-signature: signature does not verify with key "fuzz" of provider "fuzz"`},
		"payload-array": {rawToken(`{"alg":"EdDSA","kid":"fuzz"}`, `[]`, nil), "malformed: payload is not a JSON object"},
		"wrong-issuer":  {k.Sign(t, claims(t0, "iss", "https://other.example")), `wrong-issuer: token issuer "https://other.example", want "https://issuer.example"`},
	}
}

// TestFuzzSeeds keeps the committed seed corpus meaningful: each seed
// gets the answer it was made for. -update rewrites it.
func TestFuzzSeeds(t *testing.T) {
	p, _ := fuzzProvider(t)
	dir := filepath.Join("testdata", "fuzz", "FuzzVerify")
	seeds := fuzzSeeds(t)
	if *update {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, s := range seeds {
			data := "go test fuzz v1\nstring(" + strconv.Quote(s.token) + ")\n"
			if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name, s := range seeds {
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatalf("%v (run with -update)", err)
			}
			quoted, ok := strings.CutPrefix(strings.TrimSpace(string(data)), "go test fuzz v1\nstring(")
			if !ok || !strings.HasSuffix(quoted, ")") {
				t.Fatalf("not a fuzz corpus file of one string:\n%s", data)
			}
			token, err := strconv.Unquote(strings.TrimSuffix(quoted, ")"))
			if err != nil {
				t.Fatal(err)
			}
			// Ed25519 and HMAC signatures are deterministic, so every
			// seed is reproducible.
			if token != s.token {
				t.Errorf("seed differs from what fuzzSeeds makes now (run with -update)")
			}
			_, err = p.Verify(context.Background(), token)
			wantErr(t, err, s.want)
		})
	}
}

// FuzzVerify feeds arbitrary strings to Provider.Verify and Set.Verify:
// no panic, errors are *Error with a known reason, and whatever verifies
// is a token of the provider's issuer.
func FuzzVerify(f *testing.F) {
	p, set := fuzzProvider(f)
	reasons := []string{
		jwtauth.ReasonMalformed, jwtauth.ReasonAlgRefused, jwtauth.ReasonUnknownKid,
		jwtauth.ReasonBadSignature, jwtauth.ReasonExpired, jwtauth.ReasonNotYetValid,
		jwtauth.ReasonIssuedInFuture, jwtauth.ReasonWrongIssuer, jwtauth.ReasonWrongAudience,
		jwtauth.ReasonUnknownIssuer, jwtauth.ReasonNoKeys,
	}
	check := func(t *testing.T, via string, c *jwtauth.Claims, err error) {
		if err != nil {
			var e *jwtauth.Error
			if !errors.As(err, &e) || !slices.Contains(reasons, e.Reason) || e.Detail == "" {
				t.Fatalf("%s: error %T %v, want a *jwtauth.Error with a known reason", via, err, err)
			}
			if c != nil {
				t.Fatalf("%s: claims with error %v", via, err)
			}
			return
		}
		if c == nil || c.Issuer != issuer || c.Raw == nil {
			t.Fatalf("%s: verified claims %+v", via, c)
		}
	}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, token string) {
		c, err := p.Verify(ctx, token)
		check(t, "Provider.Verify", c, err)
		c2, sp, err2 := set.Verify(ctx, token)
		check(t, "Set.Verify", c2, err2)
		if (err == nil) != (err2 == nil) {
			t.Fatalf("Provider.Verify: %v; Set.Verify: %v", err, err2)
		}
		if err2 == nil && sp != p {
			t.Fatalf("Set.Verify chose %v", sp)
		}
	})
}
