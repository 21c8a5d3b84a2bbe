package jwtauth

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"go.uber.org/zap"
)

// Defaults for the zero values of Options.
const (
	DefaultRefreshInterval    = 5 * time.Minute
	DefaultMinRefreshInterval = 5 * time.Second
	DefaultKeyRetention       = 15 * time.Minute
	DefaultClockSkew          = 60 * time.Second
	// DefaultHTTPTimeout bounds one JWKS fetch by the client New makes
	// when Options.HTTPClient is nil.
	DefaultHTTPTimeout = 5 * time.Second
)

// Options configure one JWT provider: an issuer and the keys it signs
// with. Field names in errors are the YAML keys of the proxy's config.
type Options struct {
	// Name names the provider in errors and logs. Required.
	Name string
	// Issuer is the "iss" a token must carry. Required.
	Issuer string
	// Audiences, when not empty, are the audiences this proxy accepts: the
	// token's "aud" must contain at least one of them. Empty: "aud" is
	// not checked.
	Audiences []string
	// JWKSFile is a JWKS (RFC 7517 §5) JSON file. Exactly one of JWKSFile
	// and JWKSURL is set.
	JWKSFile string
	// JWKSURL is the http:// or https:// URL of a JWKS.
	JWKSURL string
	// HTTPClient fetches JWKSURL. Nil: a client with a
	// DefaultHTTPTimeout timeout.
	HTTPClient *http.Client
	// RefreshInterval is how often Run re-reads JWKSFile or re-fetches
	// JWKSURL. Zero: DefaultRefreshInterval.
	RefreshInterval time.Duration
	// MinRefreshInterval is the least time between two refreshes started by
	// a token whose kid is unknown (or by a Verify that finds no keys), so
	// that a stream of tokens with made-up kids cannot hammer the JWKS
	// endpoint. Zero: DefaultMinRefreshInterval.
	MinRefreshInterval time.Duration
	// KeyRetention is how long a key that a refresh no longer lists stays
	// valid, so that tokens signed just before a rotation still verify.
	// Zero: DefaultKeyRetention.
	KeyRetention time.Duration
	// ClockSkew is the leeway allowed when checking exp, nbf and iat.
	// Zero: DefaultClockSkew.
	ClockSkew time.Duration
	// Now is the clock for token times, key retention and the refresh rate
	// limit. Nil: time.Now. Tests move it.
	Now func() time.Time
	// Log records refreshes: failures at warn, changes of the key set at
	// info. Nil: no logging.
	Log *zap.Logger
}

// validate reports every problem of o at once, each naming the field by
// its YAML key.
func (o *Options) validate() error {
	var errs []error
	if o.Name == "" {
		errs = append(errs, errors.New("name: required"))
	}
	if o.Issuer == "" {
		errs = append(errs, errors.New("issuer: required"))
	}
	for i, a := range o.Audiences {
		if a == "" {
			errs = append(errs, fmt.Errorf("audiences[%d]: empty", i))
		}
	}
	if (o.JWKSFile == "") == (o.JWKSURL == "") {
		errs = append(errs, errors.New("jwksFile: want exactly one of jwksFile or jwksURL"))
	}
	if o.JWKSURL != "" {
		u, err := url.Parse(o.JWKSURL)
		switch {
		case err != nil:
			// url.Error repeats the URL, which may hold credentials.
			errs = append(errs, errors.New("jwksURL: not a URL"))
		case u.Scheme != "http" && u.Scheme != "https", u.Host == "":
			errs = append(errs, fmt.Errorf("jwksURL: want an http:// or https:// URL with a host, got %q", u.Redacted()))
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"refreshInterval", o.RefreshInterval},
		{"minRefreshInterval", o.MinRefreshInterval},
		{"keyRetention", o.KeyRetention},
		{"clockSkew", o.ClockSkew},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s: must not be negative, got %v", d.name, d.v))
		}
	}
	return errors.Join(errs...)
}

// withDefaults returns o with its zero values replaced by the defaults.
func (o Options) withDefaults() Options {
	if o.HTTPClient == nil && o.JWKSURL != "" {
		o.HTTPClient = &http.Client{Timeout: DefaultHTTPTimeout}
	}
	if o.RefreshInterval == 0 {
		o.RefreshInterval = DefaultRefreshInterval
	}
	if o.MinRefreshInterval == 0 {
		o.MinRefreshInterval = DefaultMinRefreshInterval
	}
	if o.KeyRetention == 0 {
		o.KeyRetention = DefaultKeyRetention
	}
	if o.ClockSkew == 0 {
		o.ClockSkew = DefaultClockSkew
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	o.Audiences = append([]string(nil), o.Audiences...)
	return o
}
