package jwtauth_test

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/google/go-cmp/cmp"

	"meshgate/proxy/jwtauth"
	"meshgate/proxy/jwtauth/jwtauthtest"
)

const accepted = "RS256, RS384, RS512, PS256, ES256, ES384, EdDSA"

// rawToken assembles a token from a header and payload given as JSON
// text, and a signature.
func rawToken(header, payload string, sig []byte) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(payload)) + "." + enc.EncodeToString(sig)
}

// TestVerify runs tokens, good and bad, past one file-backed provider
// whose JWKS holds a key for every accepted alg.
func TestVerify(t *testing.T) {
	keys := map[string]*jwtauthtest.Key{}
	var published []*jwtauthtest.Key
	for _, alg := range []string{"RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"} {
		k := jwtauthtest.NewKey(t, alg, strings.ToLower(alg))
		keys[alg] = k
		published = append(published, k)
	}
	// noalg is an RSA key published without "alg": the setting where the
	// HMAC key-confusion attack works on a naive verifier.
	noalg := jwtauthtest.NewKey(t, "RS256", "noalg")
	// nokid is an ES256 key published without "kid".
	nokid := jwtauthtest.NewKey(t, "ES256", "")
	jwks := jwtauthtest.JWKS(published...)
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(jwks, &set); err != nil {
		t.Fatal(err)
	}
	noalgJWK := noalg.JWK()
	noalgJWK.Algorithm = ""
	set.Keys = append(set.Keys, noalgJWK, nokid.JWK())
	path := writeFile(t, t.TempDir(), "jwks.json", jwtauthtest.MarshalJWKS(set.Keys...))

	clk := newClock()
	p, err := jwtauth.New(jwtauth.Options{
		Name:      "test",
		Issuer:    issuer,
		Audiences: []string{"api", "web"},
		JWKSFile:  path,
		Now:       clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}

	now := t0
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: mustPKIX(t, noalg.Public())})
	rsaDER := mustPKIX(t, noalg.Public())
	rsa1DER := x509.MarshalPKCS1PublicKey(keys["RS256"].Public().(*rsa.PublicKey))
	other := func(alg, kid string) *jwtauthtest.Key { return jwtauthtest.NewKey(t, alg, kid) }
	with := func(k *jwtauthtest.Key, alg string) *jwtauthtest.Key { c := *k; c.Alg = alg; return &c }
	valid := keys["RS256"].Sign(t, claims(now))
	parts := strings.Split(valid, ".")
	enc := base64.RawURLEncoding

	tests := []struct {
		name  string
		token string
		want  string // the error's text; "" for a token that verifies
	}{
		{"RS256", keys["RS256"].Sign(t, claims(now)), ""},
		{"RS384", keys["RS384"].Sign(t, claims(now)), ""},
		{"RS512", keys["RS512"].Sign(t, claims(now)), ""},
		{"PS256", keys["PS256"].Sign(t, claims(now)), ""},
		{"ES256", keys["ES256"].Sign(t, claims(now)), ""},
		{"ES384", keys["ES384"].Sign(t, claims(now)), ""},
		{"EdDSA", keys["EdDSA"].Sign(t, claims(now)), ""},
		{"RSA key without alg", noalg.Sign(t, claims(now)), ""},
		{"no kid tries every key that fits", nokid.Sign(t, claims(now)), ""},
		{"no exp is accepted", keys["ES256"].Sign(t, claims(now, "exp", absent)), ""},
		{"no iat nor nbf", keys["ES256"].Sign(t, claims(now, "iat", absent)), ""},
		{"aud list holding one", keys["ES256"].Sign(t, claims(now, "aud", []string{"other", "web"})), ""},
		{"fractional times", keys["ES256"].Sign(t, claims(now, "exp", 1796565600.5, "iat", 1796565599.25)), ""},
		{"expired within skew", keys["ES256"].Sign(t, claims(now, "exp", now.Add(-59*time.Second).Unix())), ""},
		{"nbf within skew", keys["ES256"].Sign(t, claims(now, "nbf", now.Add(59*time.Second).Unix())), ""},
		{"iat within skew", keys["ES256"].Sign(t, claims(now, "iat", now.Add(59*time.Second).Unix())), ""},

		{"expired", keys["ES256"].Sign(t, claims(now, "exp", now.Add(-time.Hour).Unix())),
			"expired: token expired at 2026-12-06T13:00:00Z (clock skew 1m0s)"},
		{"expired just beyond skew", keys["ES256"].Sign(t, claims(now, "exp", now.Add(-60*time.Second).Unix())),
			"expired: token expired at 2026-12-06T13:59:00Z (clock skew 1m0s)"},
		{"not yet valid", keys["ES256"].Sign(t, claims(now, "nbf", now.Add(2*time.Minute).Unix())),
			"not-yet-valid: token not valid before 2026-12-06T14:02:00Z (clock skew 1m0s)"},
		{"issued in the future", keys["ES256"].Sign(t, claims(now, "iat", now.Add(2*time.Minute).Unix())),
			"issued-in-future: token issued at 2026-12-06T14:02:00Z, in the future (clock skew 1m0s)"},
		{"wrong audience", keys["ES256"].Sign(t, claims(now, "aud", "billing")),
			`wrong-audience: token audience ["billing"] has none of ["api" "web"]`},
		{"wrong audience list", keys["ES256"].Sign(t, claims(now, "aud", []string{"a", "b", "c", "d", "e", "f"})),
			`wrong-audience: token audience ["a" "b" "c" "d" and 2 more] has none of ["api" "web"]`},
		{"no audience", keys["ES256"].Sign(t, claims(now, "aud", absent)),
			`wrong-audience: token audience [] has none of ["api" "web"]`},
		{"wrong issuer", keys["ES256"].Sign(t, claims(now, "iss", "https://evil.example")),
			`wrong-issuer: token issuer "https://evil.example", want "https://issuer.example"`},
		{"no issuer", keys["ES256"].Sign(t, claims(now, "iss", absent)),
			`wrong-issuer: token issuer "", want "https://issuer.example"`},
		{"long issuer is cut", keys["ES256"].Sign(t, claims(now, "iss", strings.Repeat("x", 100))),
			`wrong-issuer: token issuer "` + strings.Repeat("x", 64) + `"…, want "https://issuer.example"`},

		{"payload changed", parts[0] + "." + enc.EncodeToString([]byte(`{"iss":"https://issuer.example","sub":"admin","aud":"api"}`)) + "." + parts[2],
			`bad-signature: signature does not verify with key "rs256" of provider "test"`},
		{"signature changed", parts[0] + "." + parts[1] + "." + flip(parts[2]),
			`bad-signature: signature does not verify with key "rs256" of provider "test"`},
		{"signature empty", parts[0] + "." + parts[1] + ".",
			`bad-signature: signature does not verify with key "rs256" of provider "test"`},
		{"another key with a known kid", other("ES256", "es256").Sign(t, claims(now)),
			`bad-signature: signature does not verify with key "es256" of provider "test"`},
		{"another key without kid", other("ES256", "").Sign(t, claims(now)),
			`bad-signature: signature does not verify with any of the 2 ES256 keys of provider "test"`},
		{"embedded jwk is not trusted", signEmbedded(t, other("RS256", ""), claims(now)),
			`bad-signature: signature does not verify with any of the 2 RS256 keys of provider "test"`},

		{"alg none", jwtauthtest.SignNone(claims(now)),
			`alg-refused: alg "none" is not accepted (want one of ` + accepted + `)`},
		{"alg none with kid", rawToken(`{"alg":"none","kid":"rs256"}`, `{}`, nil),
			`alg-refused: alg "none" is not accepted (want one of ` + accepted + `)`},
		{"alg NONE", rawToken(`{"alg":"NONE"}`, `{}`, nil),
			`alg-refused: alg "NONE" is not accepted (want one of ` + accepted + `)`},
		{"HS256 keyed with the RSA public key PEM", jwtauthtest.SignHMAC(t, "HS256", rsaPEM, "noalg", claims(now)),
			`alg-refused: alg "HS256" is not accepted (want one of ` + accepted + `)`},
		{"HS256 keyed with the RSA public key DER", jwtauthtest.SignHMAC(t, "HS256", rsaDER, "noalg", claims(now)),
			`alg-refused: alg "HS256" is not accepted (want one of ` + accepted + `)`},
		{"HS384 keyed with a PKCS#1 RSA public key", jwtauthtest.SignHMAC(t, "HS384", rsa1DER, "rs256", claims(now)),
			`alg-refused: alg "HS384" is not accepted (want one of ` + accepted + `)`},
		{"HS512 without kid", jwtauthtest.SignHMAC(t, "HS512", rsaPEM, "", claims(now)),
			`alg-refused: alg "HS512" is not accepted (want one of ` + accepted + `)`},
		{"PS384 is not accepted", with(keys["PS256"], "PS384").Sign(t, claims(now)),
			`alg-refused: alg "PS384" is not accepted (want one of ` + accepted + `)`},
		{"ES512 is not accepted", other("ES512", "es512").Sign(t, claims(now)),
			`alg-refused: alg "ES512" is not accepted (want one of ` + accepted + `)`},
		{"token alg differs from the key's", with(keys["RS256"], "RS384").Sign(t, claims(now)),
			`alg-refused: token alg RS384 does not fit key "rs256" of provider "test": the key is for RS256`},
		{"ES256 with the kid of an RSA key", other("ES256", "noalg").Sign(t, claims(now)),
			`alg-refused: token alg ES256 does not fit key "noalg" of provider "test": ES256 needs an EC P-256 key, not an RSA key`},
		{"ES384 with the kid of a P-256 key", other("ES384", "es256").Sign(t, claims(now)),
			`alg-refused: token alg ES384 does not fit key "es256" of provider "test": ES384 needs an EC P-384 key, not an EC P-256 key`},
		{"RS256 with the kid of an Ed25519 key", other("RS256", "eddsa").Sign(t, claims(now)),
			`alg-refused: token alg RS256 does not fit key "eddsa" of provider "test": RS256 needs an RSA key, not an Ed25519 key`},

		{"unknown kid", other("ES256", "rotated").Sign(t, claims(now)),
			`unknown-kid: provider "test" has no key with kid "rotated"`},

		{"empty", "", "malformed: token is not three dot-separated parts (header.payload.signature)"},
		{"one part", "abc", "malformed: token is not three dot-separated parts (header.payload.signature)"},
		{"two parts", parts[0] + "." + parts[1], "malformed: token is not three dot-separated parts (header.payload.signature)"},
		{"four parts", valid + ".x", "malformed: token is not three dot-separated parts (header.payload.signature)"},
		{"JSON serialization", `{"payload":"e30","signatures":[]}`, "malformed: token is not three dot-separated parts (header.payload.signature)"},
		{"bad base64", "!!!." + parts[1] + "." + parts[2], malformedJWS},
		{"padded base64", parts[0] + "=." + parts[1] + "." + parts[2], malformedJWS},
		{"header not JSON", rawToken(`alg`, `{}`, nil), malformedJWS},
		{"header without alg", rawToken(`{"kid":"rs256"}`, `{}`, nil), "malformed: token header has no alg"},
		{"header alg a number", rawToken(`{"alg":256}`, `{}`, nil), malformedJWS},
		{"empty payload", rawToken(`{"alg":"RS256"}`, ``, nil), "malformed: payload is not a JSON object"},
		{"payload not JSON", rawToken(`{"alg":"RS256"}`, `iss`, nil), "malformed: payload is not a JSON object"},
		{"payload an array", rawToken(`{"alg":"RS256"}`, `[1]`, nil), "malformed: payload is not a JSON object"},
		{"payload null", rawToken(`{"alg":"RS256"}`, `null`, nil), "malformed: payload is not a JSON object"},
		{"payload trailing data", rawToken(`{"alg":"RS256"}`, `{}{}`, nil), "malformed: payload has data after its JSON object"},
		{"iss a number", rawToken(`{"alg":"RS256"}`, `{"iss":1}`, nil), `malformed: claim "iss" is not a string`},
		{"sub an object", rawToken(`{"alg":"RS256"}`, `{"sub":{}}`, nil), `malformed: claim "sub" is not a string`},
		{"aud a number", rawToken(`{"alg":"RS256"}`, `{"aud":1}`, nil), `malformed: claim "aud" is not a string or a list of strings`},
		{"aud null", rawToken(`{"alg":"RS256"}`, `{"aud":null}`, nil), `malformed: claim "aud" is not a string or a list of strings`},
		{"aud list with a number", rawToken(`{"alg":"RS256"}`, `{"aud":["api",1]}`, nil), `malformed: claim "aud" is not a string or a list of strings`},
		{"exp a string", rawToken(`{"alg":"RS256"}`, `{"exp":"1796565600"}`, nil), `malformed: claim "exp" is not a NumericDate (seconds since 1970 up to year 9999)`},
		{"exp negative", rawToken(`{"alg":"RS256"}`, `{"exp":-1}`, nil), `malformed: claim "exp" is not a NumericDate (seconds since 1970 up to year 9999)`},
		{"nbf huge", rawToken(`{"alg":"RS256"}`, `{"nbf":1e300}`, nil), `malformed: claim "nbf" is not a NumericDate (seconds since 1970 up to year 9999)`},
		{"iat beyond int64", rawToken(`{"alg":"RS256"}`, `{"iat":99999999999999999999}`, nil), `malformed: claim "iat" is not a NumericDate (seconds since 1970 up to year 9999)`},
		{"unsupported crit", signCrit(t, keys["ES256"], claims(now)), `malformed: token header cannot be verified (unsupported "crit" parameter?)`},
		{"larger than 64 KiB", keys["ES256"].Sign(t, claims(now, "pad", strings.Repeat("x", 64<<10))), "malformed: token is larger than 65536 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := p.Verify(context.Background(), tt.token)
			wantErr(t, err, tt.want)
			if err == nil && (c == nil || c.Issuer != issuer) {
				t.Fatalf("verified claims %+v, want issuer %q", c, issuer)
			}
			if err != nil {
				if c != nil {
					t.Errorf("claims %+v with an error", c)
				}
				for _, part := range strings.Split(tt.token, ".") {
					if len(part) >= 16 && strings.Contains(err.Error(), part) {
						t.Errorf("error repeats part of the token: %v", err)
					}
				}
			}
		})
	}
}

const malformedJWS = "malformed: token is not a compact JWS (base64url header, payload and signature; header a JSON object with an alg)"

func mustPKIX(t *testing.T, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// flip changes the first character of a base64url string.
func flip(s string) string {
	if s[0] == 'A' {
		return "B" + s[1:]
	}
	return "A" + s[1:]
}

// signEmbedded signs claims with k, embedding k's public key in the
// header ("jwk", RFC 7515 §4.1.3): a verifier that trusts it accepts any
// key.
func signEmbedded(t *testing.T, k *jwtauthtest.Key, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(k.Alg), Key: k.Signer}, &jose.SignerOptions{EmbedJWK: true})
	if err != nil {
		t.Fatal(err)
	}
	return signWith(t, s, claims)
}

// signCrit signs claims with k and a "crit" header naming an extension
// the verifier does not know (RFC 7515 §4.1.11: it must refuse).
func signCrit(t *testing.T, k *jwtauthtest.Key, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithHeader("kid", k.Kid).WithHeader("x-must", true).WithCritical("x-must")
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(k.Alg), Key: k.Signer}, opts)
	if err != nil {
		t.Fatal(err)
	}
	return signWith(t, s, claims)
}

func signWith(t *testing.T, s jose.Signer, claims map[string]any) string {
	t.Helper()
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestVerifyClaims checks what a verified token yields.
func TestVerifyClaims(t *testing.T) {
	k := jwtauthtest.NewKey(t, "EdDSA", "k1")
	p, err := jwtauth.New(jwtauth.Options{
		Name:     "test",
		Issuer:   issuer,
		JWKSFile: writeFile(t, t.TempDir(), "jwks.json", jwtauthtest.JWKS(k)),
		Now:      newClock().Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	tok := k.Sign(t, claims(t0,
		"aud", []string{"api", "web"},
		"nbf", t0.Add(-time.Minute).Unix(),
		"realm_access", map[string]any{"roles": []string{"admin", "dev"}},
		"big", json.Number("12345678901234567890"),
		"ratio", 0.5,
	))
	c, err := p.Verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	want := &jwtauth.Claims{
		Issuer:    issuer,
		Subject:   "alice",
		Audience:  []string{"api", "web"},
		Expiry:    t0.Add(time.Hour),
		NotBefore: t0.Add(-time.Minute),
		IssuedAt:  t0,
		Raw: map[string]any{
			"iss":          issuer,
			"sub":          "alice",
			"aud":          []any{"api", "web"},
			"exp":          json.Number("1796569200"),
			"nbf":          json.Number("1796565540"),
			"iat":          json.Number("1796565600"),
			"realm_access": map[string]any{"roles": []any{"admin", "dev"}},
			"big":          json.Number("12345678901234567890"),
			"ratio":        json.Number("0.5"),
		},
		Payload: payload,
	}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("claims (-want +got):\n%s", diff)
	}

	lookups := []struct {
		path   []string
		want   any
		wantOK bool
	}{
		{[]string{"realm_access", "roles"}, []any{"admin", "dev"}, true},
		{[]string{"realm_access"}, map[string]any{"roles": []any{"admin", "dev"}}, true},
		{[]string{"sub"}, "alice", true},
		{[]string{"realm_access", "missing"}, nil, false},
		{[]string{"sub", "x"}, nil, false},
		{[]string{"realm_access", "roles", "0"}, nil, false},
		{[]string{"missing"}, nil, false},
		{nil, c.Raw, true},
	}
	for _, l := range lookups {
		got, ok := c.Lookup(l.path...)
		if ok != l.wantOK || !cmp.Equal(got, l.want) {
			t.Errorf("Lookup(%q) = %v, %v; want %v, %v", l.path, got, ok, l.want, l.wantOK)
		}
	}
}

// TestVerifyNoKidNoKeyForAlg: a token without kid whose alg no key fits.
func TestVerifyNoKidNoKeyForAlg(t *testing.T) {
	rsaKey := jwtauthtest.NewKey(t, "RS256", "")
	p, err := jwtauth.New(jwtauth.Options{
		Name:     "rsa-only",
		Issuer:   issuer,
		JWKSFile: writeFile(t, t.TempDir(), "jwks.json", jwtauthtest.JWKS(rsaKey)),
		Now:      newClock().Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Verify(context.Background(), jwtauthtest.NewKey(t, "ES256", "").Sign(t, claims(t0)))
	wantErr(t, err, `alg-refused: token has no kid and provider "rsa-only" has no key for alg ES256`)
	_, err = p.Verify(context.Background(), rsaKey.Sign(t, claims(t0)))
	wantErr(t, err, "")
}
