package jwtauth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"meshgate/proxy/jwtauth"
	"meshgate/proxy/jwtauth/jwtauthtest"
)

func TestNewOptions(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "jwks.json", jwtauthtest.JWKS(jwtauthtest.NewKey(t, "ES256", "k1")))
	ok := func(o jwtauth.Options) jwtauth.Options {
		if o.Name == "" {
			o.Name = "test"
		}
		if o.Issuer == "" {
			o.Issuer = issuer
		}
		if o.JWKSFile == "" && o.JWKSURL == "" {
			o.JWKSFile = good
		}
		return o
	}
	tests := []struct {
		name string
		opts jwtauth.Options
		want string
	}{
		{"file", ok(jwtauth.Options{}), ""},
		{"URL", ok(jwtauth.Options{JWKSURL: "https://issuer.example/.well-known/jwks.json"}), ""},
		{"everything", ok(jwtauth.Options{
			Audiences: []string{"api"}, RefreshInterval: time.Minute, MinRefreshInterval: time.Second,
			KeyRetention: time.Hour, ClockSkew: time.Second,
		}), ""},
		{"empty", jwtauth.Options{},
			"name: required\nissuer: required\njwksFile: want exactly one of jwksFile or jwksURL"},
		{"file and URL", jwtauth.Options{Name: "a", Issuer: "b", JWKSFile: good, JWKSURL: "https://x/jwks"},
			"jwksFile: want exactly one of jwksFile or jwksURL"},
		{"URL not http", ok(jwtauth.Options{JWKSURL: "ftp://issuer.example/jwks"}),
			`jwksURL: want an http:// or https:// URL with a host, got "ftp://issuer.example/jwks"`},
		{"URL without host, credentials redacted", ok(jwtauth.Options{JWKSURL: "https://user:secret@/jwks"}),
			`jwksURL: want an http:// or https:// URL with a host, got "https://user:xxxxx@/jwks"`},
		{"URL relative", ok(jwtauth.Options{JWKSURL: "/jwks"}),
			`jwksURL: want an http:// or https:// URL with a host, got "/jwks"`},
		{"URL unparsable", ok(jwtauth.Options{JWKSURL: "http://[::1"}), "jwksURL: not a URL"},
		{"empty audience", ok(jwtauth.Options{Audiences: []string{"api", ""}}), "audiences[1]: empty"},
		{"negative durations", ok(jwtauth.Options{
			RefreshInterval: -1, MinRefreshInterval: -time.Second, KeyRetention: -time.Minute, ClockSkew: -time.Hour,
		}), "refreshInterval: must not be negative, got -1ns\n" +
			"minRefreshInterval: must not be negative, got -1s\n" +
			"keyRetention: must not be negative, got -1m0s\n" +
			"clockSkew: must not be negative, got -1h0m0s"},
		{"file missing", ok(jwtauth.Options{JWKSFile: filepath.Join(dir, "missing.json")}),
			"jwksFile: open " + filepath.Join(dir, "missing.json") + ": no such file or directory"},
		{"file a directory", ok(jwtauth.Options{JWKSFile: dir}),
			"jwksFile: " + dir + ": read " + dir + ": is a directory"},
		{"file not JSON", ok(jwtauth.Options{JWKSFile: writeFile(t, dir, "bad.json", []byte("keys"))}),
			"jwksFile: " + filepath.Join(dir, "bad.json") + `: not a JWKS: not a JSON object with a "keys" array`},
		{"file keys not a list", ok(jwtauth.Options{JWKSFile: writeFile(t, dir, "obj.json", []byte(`{"keys":{}}`))}),
			"jwksFile: " + filepath.Join(dir, "obj.json") + `: not a JWKS: not a JSON object with a "keys" array`},
		{"file without keys", ok(jwtauth.Options{JWKSFile: writeFile(t, dir, "empty.json", []byte(`{"keys":[]}`))}),
			"jwksFile: " + filepath.Join(dir, "empty.json") + ": no usable public signature key"},
		{"file with only unusable keys", ok(jwtauth.Options{JWKSFile: writeFile(t, dir, "unusable.json",
			[]byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"hmac"},{"kty":"RSA","kid":"half"}]}`))}),
			"jwksFile: " + filepath.Join(dir, "unusable.json") + `: no usable public signature key (ignored ` +
				`keys[0] (kid "hmac"): symmetric key (kty "oct"); ` +
				`keys[1] (kid "half"): cannot parse "RSA" key: invalid RSA key, missing n/e values)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := jwtauth.New(tt.opts)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				if p.Name() != tt.opts.Name || p.Issuer() != tt.opts.Issuer {
					t.Errorf("Name, Issuer = %q, %q; want %q, %q", p.Name(), p.Issuer(), tt.opts.Name, tt.opts.Issuer)
				}
				return
			}
			if err == nil {
				t.Fatalf("New: no error, want\n%s", tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("New: got\n%s\nwant\n%s", err, tt.want)
			}
		})
	}
}

// TestIgnoredKeys: a JWKS's private, symmetric, encryption and unfit keys
// are left out, with one warning per refresh; tokens naming them are
// refused.
func TestIgnoredKeys(t *testing.T) {
	good := jwtauthtest.NewKey(t, "RS256", "good")
	priv := jwtauthtest.NewKey(t, "RS256", "priv")
	enc := jwtauthtest.NewKey(t, "RS256", "enc")
	smallRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	small := &jwtauthtest.Key{Alg: "RS256", Kid: "small", Signer: smallRSA}
	p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("0123456789abcdef0123456789abcdef")

	encJWK := enc.JWK()
	encJWK.Use = "enc"
	hsJWK := good.JWK()
	hsJWK.KeyID, hsJWK.Algorithm = "hs", "HS256"
	misJWK := good.JWK()
	misJWK.KeyID, misJWK.Algorithm = "mismatch", "ES256"
	jwks := []json.RawMessage{
		mustJSON(t, jose.JSONWebKey{Key: priv.Signer, KeyID: "priv", Algorithm: "RS256", Use: "sig"}),
		mustJSON(t, jose.JSONWebKey{Key: secret, KeyID: "hmac", Algorithm: "HS256"}),
		mustJSON(t, encJWK),
		mustJSON(t, small.JWK()),
		mustJSON(t, jose.JSONWebKey{Key: p521.Public(), KeyID: "p521"}),
		mustJSON(t, hsJWK),
		mustJSON(t, misJWK),
		json.RawMessage(`{"kty":"EC","crv":"P-999","kid":"curve"}`),
		json.RawMessage(`{"kty":"OKP","crv":"X25519","x":"AAAA","kid":"x25519"}`),
		json.RawMessage(`{"kty":"RSA"}`),
		json.RawMessage(`"not an object"`),
		mustJSON(t, good.JWK()),
	}
	doc := mustJSON(t, map[string]any{"keys": jwks})
	core, logs := observer.New(zapcore.DebugLevel)
	clk := newClock()
	p, err := jwtauth.New(jwtauth.Options{
		Name:     "test",
		Issuer:   issuer,
		JWKSFile: writeFile(t, t.TempDir(), "jwks.json", doc),
		Now:      clk.Now,
		Log:      zap.New(core),
	})
	if err != nil {
		t.Fatal(err)
	}
	warnings := logs.FilterMessage("jwks entries ignored").All()
	if len(warnings) != 1 || warnings[0].Level != zapcore.WarnLevel {
		t.Fatalf("got %d warnings %+v, want 1", len(warnings), warnings)
	}
	want := []any{
		`keys[0] (kid "priv"): private key`,
		`keys[1] (kid "hmac"): symmetric key (kty "oct")`,
		`keys[2] (kid "enc"): use "enc", not "sig"`,
		`keys[3] (kid "small"): RSA key of 1024 bits, want at least 2048`,
		`keys[4] (kid "p521"): EC key on curve P-521, want P-256 or P-384`,
		`keys[5] (kid "hs"): alg "HS256" is not accepted`,
		`keys[6] (kid "mismatch"): alg ES256 does not fit the key: ES256 needs an EC P-256 key, not an RSA key`,
		`keys[7] (kid "curve"): cannot parse "EC" key: unsupported elliptic curve 'P-999'`,
		`keys[8] (kid "x25519"): cannot parse "OKP" key: unsupported key type/format`,
		`keys[9]: cannot parse "RSA" key: invalid RSA key, missing n/e values`,
		`keys[10]: not a JSON object with string "kty" and "kid"`,
	}
	if diff := cmp.Diff(want, warnings[0].ContextMap()["ignored"]); diff != "" {
		t.Errorf("ignored (-want +got):\n%s", diff)
	}

	ctx := context.Background()
	for _, tt := range []struct {
		name, token, want string
	}{
		{"good", good.Sign(t, claims(t0)), ""},
		{"private key", priv.Sign(t, claims(t0)), `unknown-kid: provider "test" has no key with kid "priv"`},
		{"symmetric key", jwtauthtest.SignHMAC(t, "HS256", secret, "hmac", claims(t0)),
			`alg-refused: alg "HS256" is not accepted (want one of ` + accepted + `)`},
		{"encryption key", enc.Sign(t, claims(t0)), `unknown-kid: provider "test" has no key with kid "enc"`},
		{"small RSA key", small.Sign(t, claims(t0)), `unknown-kid: provider "test" has no key with kid "small"`},
		{"alg mismatch", (&jwtauthtest.Key{Alg: "RS256", Kid: "mismatch", Signer: good.Signer}).Sign(t, claims(t0)),
			`unknown-kid: provider "test" has no key with kid "mismatch"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := p.Verify(ctx, tt.token)
			wantErr(t, err, tt.want)
		})
	}
}

func mustJSON(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
