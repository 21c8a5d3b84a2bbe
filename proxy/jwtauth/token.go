package jwtauth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	jose "github.com/go-jose/go-jose/v4"
)

// MaxTokenSize is the largest token Verify parses. Real tokens are a few
// KiB; the cap bounds the work an unauthenticated client can ask for.
const MaxTokenSize = 64 << 10

// Reasons of Error: short, stable codes for metrics, logs and tests.
const (
	ReasonMalformed      = "malformed"
	ReasonAlgRefused     = "alg-refused"
	ReasonUnknownKid     = "unknown-kid"
	ReasonBadSignature   = "bad-signature"
	ReasonExpired        = "expired"
	ReasonNotYetValid    = "not-yet-valid"
	ReasonIssuedInFuture = "issued-in-future"
	ReasonWrongIssuer    = "wrong-issuer"
	ReasonWrongAudience  = "wrong-audience"
	ReasonUnknownIssuer  = "unknown-issuer"
	ReasonNoKeys         = "no-keys"
)

// Error is why a token was refused. It never holds the token nor key
// material, so it may be logged and sent in a 401 body; values taken from
// the token (alg, kid, iss, aud) are quoted and cut short.
type Error struct {
	// Reason is one of the Reason constants.
	Reason string
	// Detail is a sentence for logs and the 401 body.
	Detail string
}

func (e *Error) Error() string { return e.Reason + ": " + e.Detail }

func refuse(reason, format string, args ...any) *Error {
	return &Error{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// quote quotes a value that may come from an attacker, cut to 64 bytes.
func quote(s string) string {
	const max = 64
	if len(s) <= max {
		return strconv.Quote(s)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "…"
}

// Claims are the claims of a verified token.
type Claims struct {
	Issuer   string
	Subject  string
	Audience []string // "aud", a string or a list in the token
	// Expiry, NotBefore and IssuedAt are exp, nbf and iat; zero if absent.
	Expiry, NotBefore, IssuedAt time.Time
	// Raw is every claim, decoded with json.Decoder.UseNumber: numbers are
	// json.Number, objects map[string]any, arrays []any.
	Raw map[string]any
	// Payload is the token's verified payload JSON as sent.
	Payload []byte
}

// Lookup returns the claim at a path of nested object keys, e.g.
// Lookup("realm_access", "roles"). With no path it returns Raw.
func (c *Claims) Lookup(path ...string) (any, bool) {
	var cur any = c.Raw
	for _, name := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[name]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// token is a compact JWS parsed but not verified.
type token struct {
	jws    *jose.JSONWebSignature
	alg    string
	kid    string
	claims *Claims // decoded from the unverified payload
}

// parse parses a compact JWS and decodes its payload as JWT claims. Only
// the accepted algs get past it. Nothing it returns is trusted yet.
func parse(s string) (*token, *Error) {
	if len(s) > MaxTokenSize {
		return nil, refuse(ReasonMalformed, "token is larger than %d bytes", MaxTokenSize)
	}
	if strings.Count(s, ".") != 2 {
		return nil, refuse(ReasonMalformed, "token is not three dot-separated parts (header.payload.signature)")
	}
	jws, err := jose.ParseSignedCompact(s, acceptedAlgs)
	if err != nil {
		var algErr *jose.ErrUnexpectedSignatureAlgorithm
		if errors.As(err, &algErr) && algErr.Got == "" {
			return nil, refuse(ReasonMalformed, "token header has no alg")
		}
		if errors.As(err, &algErr) {
			return nil, refuse(ReasonAlgRefused, "alg %s is not accepted (want one of %s)", quote(string(algErr.Got)), acceptedList())
		}
		// go-jose's errors may quote bytes of the token: say what it is,
		// not what it held.
		return nil, refuse(ReasonMalformed, "token is not a compact JWS (base64url header, payload and signature; header a JSON object with an alg)")
	}
	if len(jws.Signatures) != 1 {
		return nil, refuse(ReasonMalformed, "token has %d signatures, want 1", len(jws.Signatures))
	}
	hdr := jws.Signatures[0].Header
	c, perr := decodeClaims(jws.UnsafePayloadWithoutVerification())
	if perr != nil {
		return nil, perr
	}
	return &token{jws: jws, alg: hdr.Algorithm, kid: hdr.KeyID, claims: c}, nil
}

func acceptedList() string {
	s := make([]string, len(acceptedAlgs))
	for i, a := range acceptedAlgs {
		s[i] = string(a)
	}
	return strings.Join(s, ", ")
}

// maxNumericDate is 9999-12-31T23:59:59Z; larger dates are nonsense.
const maxNumericDate = 253402300799

// decodeClaims decodes a JWT payload: a JSON object whose registered
// claims (RFC 7519 §4.1) have the types the RFC gives them.
func decodeClaims(payload []byte) (*Claims, *Error) {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	var raw map[string]any
	if err := dec.Decode(&raw); err != nil || raw == nil {
		return nil, refuse(ReasonMalformed, "payload is not a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, refuse(ReasonMalformed, "payload has data after its JSON object")
	}
	c := &Claims{Raw: raw, Payload: payload}
	var ok bool
	if v, has := raw["iss"]; has {
		if c.Issuer, ok = v.(string); !ok {
			return nil, refuse(ReasonMalformed, "claim \"iss\" is not a string")
		}
	}
	if v, has := raw["sub"]; has {
		if c.Subject, ok = v.(string); !ok {
			return nil, refuse(ReasonMalformed, "claim \"sub\" is not a string")
		}
	}
	switch v := raw["aud"].(type) {
	case nil:
		if _, has := raw["aud"]; has {
			return nil, refuse(ReasonMalformed, "claim \"aud\" is not a string or a list of strings")
		}
	case string:
		c.Audience = []string{v}
	case []any:
		c.Audience = make([]string, len(v))
		for i, a := range v {
			if c.Audience[i], ok = a.(string); !ok {
				return nil, refuse(ReasonMalformed, "claim \"aud\" is not a string or a list of strings")
			}
		}
	default:
		return nil, refuse(ReasonMalformed, "claim \"aud\" is not a string or a list of strings")
	}
	for _, d := range []struct {
		name string
		t    *time.Time
	}{{"exp", &c.Expiry}, {"nbf", &c.NotBefore}, {"iat", &c.IssuedAt}} {
		v, has := raw[d.name]
		if !has {
			continue
		}
		t, ok := numericDate(v)
		if !ok {
			return nil, refuse(ReasonMalformed, "claim %q is not a NumericDate (seconds since 1970 up to year 9999)", d.name)
		}
		*d.t = t
	}
	return c, nil
}

// numericDate converts a NumericDate (RFC 7519 §2: seconds since the
// epoch, possibly fractional).
func numericDate(v any) (time.Time, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return time.Time{}, false
	}
	if i, err := strconv.ParseInt(string(n), 10, 64); err == nil {
		if i < 0 || i > maxNumericDate {
			return time.Time{}, false
		}
		return time.Unix(i, 0).UTC(), true
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil || math.IsNaN(f) || f < 0 || f > maxNumericDate {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC(), true
}
