package jwtauthtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
)

// Key is a signing key and how it is published.
type Key struct {
	// Alg is the JWS alg Sign uses and the JWKS states, e.g. "RS256".
	Alg string
	// Kid is the key ID: the JWKS's "kid" and the tokens' header "kid".
	// Empty: neither has one.
	Kid string
	// Signer is the private key: *rsa.PrivateKey, *ecdsa.PrivateKey or
	// ed25519.PrivateKey.
	Signer crypto.Signer
}

// NewKey generates a key for alg: RSA 2048 for RS256/384/512 and
// PS256/384/512, P-256 for ES256, P-384 for ES384, P-521 for ES512,
// Ed25519 for EdDSA.
func NewKey(t testing.TB, alg, kid string) *Key {
	t.Helper()
	var s crypto.Signer
	var err error
	switch alg {
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
		s, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ES256":
		s, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ES384":
		s, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "ES512":
		s, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case "EdDSA":
		_, s, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("jwtauthtest: no key type for alg %q", alg)
	}
	if err != nil {
		t.Fatalf("jwtauthtest: generate %s key: %v", alg, err)
	}
	return &Key{Alg: alg, Kid: kid, Signer: s}
}

// Public is the public key.
func (k *Key) Public() crypto.PublicKey { return k.Signer.Public() }

// JWK is the public JWK of k, with "kid", "alg" and "use": "sig".
func (k *Key) JWK() jose.JSONWebKey {
	return jose.JSONWebKey{Key: k.Public(), KeyID: k.Kid, Algorithm: k.Alg, Use: "sig"}
}

// JWKS is the JWKS document publishing the public keys of keys.
func JWKS(keys ...*Key) []byte {
	jwks := make([]jose.JSONWebKey, len(keys))
	for i, k := range keys {
		jwks[i] = k.JWK()
	}
	return MarshalJWKS(jwks...)
}

// MarshalJWKS is the JWKS document of jwks, as they are (private or
// symmetric ones included, for tests of what a verifier ignores).
func MarshalJWKS(jwks ...jose.JSONWebKey) []byte {
	if jwks == nil {
		jwks = []jose.JSONWebKey{}
	}
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: jwks})
	if err != nil {
		panic("jwtauthtest: marshal JWKS: " + err.Error())
	}
	return b
}

// Sign returns the compact JWS of claims signed by k with k.Alg, with
// header "kid" (if k.Kid is set) and "typ": "JWT".
func (k *Key) Sign(t testing.TB, claims map[string]any) string {
	t.Helper()
	return sign(t, jose.SignatureAlgorithm(k.Alg), k.Signer, k.Kid, claims)
}

// SignHMAC returns claims signed with an HMAC alg (HS256, HS384, HS512)
// and secret: the forgery where secret is an issuer's public key.
func SignHMAC(t testing.TB, alg string, secret []byte, kid string, claims map[string]any) string {
	t.Helper()
	return sign(t, jose.SignatureAlgorithm(alg), secret, kid, claims)
}

func sign(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader(jose.HeaderKey("kid"), kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatalf("jwtauthtest: signer for %s: %v", alg, err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatalf("jwtauthtest: marshal claims: %v", err)
	}
	jws, err := s.Sign(payload)
	if err != nil {
		t.Fatalf("jwtauthtest: sign: %v", err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		t.Fatalf("jwtauthtest: serialize: %v", err)
	}
	return tok
}

// SignNone returns the unsecured JWT (RFC 7519 §6, alg "none") of claims:
// header.payload and an empty signature.
func SignNone(claims map[string]any) string {
	payload, err := json.Marshal(claims)
	if err != nil {
		panic("jwtauthtest: marshal claims: " + err.Error())
	}
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc.EncodeToString(payload) + "."
}
