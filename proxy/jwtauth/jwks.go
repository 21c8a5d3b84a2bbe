package jwtauth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// maxJWKSSize caps a JWKS document: real ones hold a handful of keys, a
// few KiB.
const maxJWKSSize = 1 << 20

// minRSABits is the smallest RSA modulus accepted (NIST SP 800-131A).
const minRSABits = 2048

// source is where a provider's JWKS comes from.
type source interface {
	fetch(ctx context.Context) ([]byte, error)
	// String names the source in logs and errors, without credentials.
	String() string
}

type fileSource struct{ path string }

func (s fileSource) fetch(context.Context) ([]byte, error) {
	f, err := os.Open(s.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readCapped(f, s.path)
}

func (s fileSource) String() string { return s.path }

type urlSource struct {
	url    *url.URL
	client *http.Client
}

func (s urlSource) fetch(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // its text repeats the URL, credentials and all
		}
		return nil, fmt.Errorf("GET %s: %w", s, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %s", s, resp.Status)
	}
	return readCapped(resp.Body, "GET "+s.String())
}

func (s urlSource) String() string { return s.url.Redacted() }

func readCapped(r io.Reader, what string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxJWKSSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if len(b) > maxJWKSSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", what, maxJWKSSize)
	}
	return b, nil
}

// key is one usable verification key. Keys are immutable once in a
// keySet.
type key struct {
	kid string
	alg string // the JWKS's "alg" for it; "" if absent
	pub crypto.PublicKey
	// id tells keys apart across refreshes: kid, alg and the RFC 7638
	// thumbprint, so that a kid reused for new material is a new key.
	id string
	// retainUntil is zero while the JWKS lists the key; once a refresh no
	// longer does, the key stays valid until then.
	retainUntil time.Time
}

// live reports whether k may verify tokens at now.
func (k *key) live(now time.Time) bool {
	return k.retainUntil.IsZero() || now.Before(k.retainUntil)
}

// keySet is a provider's keys at one moment: the ones of the last good
// JWKS first, then retained ones.
type keySet struct {
	keys []*key
}

// ignoredKey is a JWKS entry left out, and why.
type ignoredKey struct {
	index int
	kid   string
	why   string
}

func (ik ignoredKey) String() string {
	if ik.kid == "" {
		return fmt.Sprintf("keys[%d]: %s", ik.index, ik.why)
	}
	return fmt.Sprintf("keys[%d] (kid %s): %s", ik.index, quote(ik.kid), ik.why)
}

// parseJWKS reads a JWKS document into its usable keys. Entries that are
// not a public signature key of an accepted type are ignored (and
// reported): private keys (their presence means the publisher leaked
// them), symmetric keys (a shared secret is no public key), keys whose
// "use" is not "sig", and keys no accepted alg fits. An entry that does
// not parse is ignored too, so that one odd key does not hide the rest. It
// is an error if no key is left.
func parseJWKS(data []byte) ([]*key, []ignoredKey, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, nil, errors.New("not a JWKS: not a JSON object with a \"keys\" array")
	}
	var keys []*key
	var ignored []ignoredKey
	for i, raw := range doc.Keys {
		k, kid, why := parseKey(raw)
		if why != "" {
			ignored = append(ignored, ignoredKey{index: i, kid: kid, why: why})
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		msg := "no usable public signature key"
		if len(ignored) > 0 {
			s := make([]string, len(ignored))
			for i, ik := range ignored {
				s[i] = ik.String()
			}
			msg += " (ignored " + strings.Join(s, "; ") + ")"
		}
		return nil, ignored, errors.New(msg)
	}
	return keys, ignored, nil
}

// parseKey returns the usable key of one JWKS entry, or why it is not
// one. The reasons never repeat key material.
func parseKey(raw json.RawMessage) (k *key, kid, why string) {
	var hdr struct {
		Kid string `json:"kid"`
		Kty string `json:"kty"`
	}
	if err := json.Unmarshal(raw, &hdr); err != nil {
		return nil, "", "not a JSON object with string \"kty\" and \"kid\""
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(raw); err != nil {
		return nil, hdr.Kid, fmt.Sprintf("cannot parse %s key: %s", quote(hdr.Kty), strings.TrimPrefix(err.Error(), "go-jose/go-jose: "))
	}
	kid = jwk.KeyID
	if _, ok := jwk.Key.([]byte); ok {
		return nil, kid, "symmetric key (kty \"oct\")"
	}
	if !jwk.IsPublic() {
		return nil, kid, "private key"
	}
	if jwk.Use != "" && jwk.Use != "sig" {
		return nil, kid, fmt.Sprintf("use %s, not \"sig\"", quote(jwk.Use))
	}
	switch pub := jwk.Key.(type) {
	case *rsa.PublicKey:
		if n := pub.N.BitLen(); n < minRSABits {
			return nil, kid, fmt.Sprintf("RSA key of %d bits, want at least %d", n, minRSABits)
		}
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() && pub.Curve != elliptic.P384() {
			return nil, kid, fmt.Sprintf("EC key on curve %s, want P-256 or P-384", pub.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return nil, kid, fmt.Sprintf("unsupported key type %T", pub)
	}
	if jwk.Algorithm != "" {
		if !accepted(jwk.Algorithm) {
			return nil, kid, fmt.Sprintf("alg %s is not accepted", quote(jwk.Algorithm))
		}
		if why := fits(jwk.Algorithm, jwk.Key); why != "" {
			return nil, kid, fmt.Sprintf("alg %s does not fit the key: %s", jwk.Algorithm, why)
		}
	}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, kid, "cannot compute its thumbprint"
	}
	return &key{
		kid: kid,
		alg: jwk.Algorithm,
		pub: jwk.Key,
		id:  kid + "\x00" + jwk.Algorithm + "\x00" + base64.RawURLEncoding.EncodeToString(tp),
	}, kid, ""
}

// acceptedAlgs are the signature algorithms a token may use. Not "none"
// (no signature), and no HMAC: the keys are public, and an HMAC "signed"
// with a public key is the classic key-confusion forgery. Not PS384,
// PS512 or ES512 either: no issuer this sidecar meets uses them.
var acceptedAlgs = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.ES256, jose.ES384, jose.EdDSA,
}

func accepted(alg string) bool {
	for _, a := range acceptedAlgs {
		if string(a) == alg {
			return true
		}
	}
	return false
}

// fits reports why a key of pub's type cannot verify alg, or "" if it can.
func fits(alg string, pub crypto.PublicKey) string {
	switch alg {
	case "RS256", "RS384", "RS512", "PS256":
		if _, ok := pub.(*rsa.PublicKey); ok {
			return ""
		}
		return fmt.Sprintf("%s needs an RSA key, not %s", alg, keyType(pub))
	case "ES256", "ES384":
		curve := elliptic.P256()
		if alg == "ES384" {
			curve = elliptic.P384()
		}
		if k, ok := pub.(*ecdsa.PublicKey); ok && k.Curve == curve {
			return ""
		}
		return fmt.Sprintf("%s needs an EC %s key, not %s", alg, curve.Params().Name, keyType(pub))
	case "EdDSA":
		if _, ok := pub.(ed25519.PublicKey); ok {
			return ""
		}
		return fmt.Sprintf("EdDSA needs an Ed25519 key, not %s", keyType(pub))
	}
	return fmt.Sprintf("alg %s is not accepted", quote(alg))
}

func keyType(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return "an RSA key"
	case *ecdsa.PublicKey:
		return "an EC " + k.Curve.Params().Name + " key"
	case ed25519.PublicKey:
		return "an Ed25519 key"
	}
	return fmt.Sprintf("a %T", pub)
}

// merge makes the key set that follows old once a refresh has read fresh:
// fresh keys first, usable at once; keys of old that fresh no longer
// lists, retained until now+retention (or until the deadline they already
// had); retained keys past their deadline, dropped.
func merge(old *keySet, fresh []*key, now time.Time, retention time.Duration) (next *keySet, added, retained, dropped int) {
	ids := make(map[string]bool, len(fresh))
	for _, k := range fresh {
		ids[k.id] = true
	}
	next = &keySet{keys: append([]*key(nil), fresh...)}
	added = len(fresh)
	if old == nil {
		return next, added, 0, 0
	}
	for _, k := range old.keys {
		switch {
		case ids[k.id]:
			if k.retainUntil.IsZero() {
				added--
			}
		case k.retainUntil.IsZero():
			r := *k
			r.retainUntil = now.Add(retention)
			next.keys = append(next.keys, &r)
			retained++
		case k.live(now):
			next.keys = append(next.keys, k)
		default:
			dropped++
		}
	}
	return next, added, retained, dropped
}
