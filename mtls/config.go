package mtls

import (
	"crypto/tls"
	"time"
)

// Option tunes ServerConfig and ClientConfig.
type Option func(*options)

type options struct {
	now          func() time.Time
	sessionCache tls.ClientSessionCache
}

// WithClock makes the configuration read the time from now instead of
// time.Now, for certificate validity and session ticket lifetimes. For
// tests.
func WithClock(now func() time.Time) Option {
	return func(o *options) { o.now = now }
}

// WithSessionCache makes ClientConfig keep sessions in c instead of a
// cache of its own, so that configurations made for different
// destinations (each with the Authorizer of its expected identity) share
// one bounded cache. Sessions are keyed by the connection's ServerName,
// or its remote address when that is empty. Resumed sessions are verified
// again under the configuration that resumes them. ServerConfig ignores it.
func WithSessionCache(c tls.ClientSessionCache) Option {
	return func(o *options) { o.sessionCache = c }
}

// DefaultSessionCacheSize is the number of sessions ClientConfig keeps
// when no WithSessionCache is given: one per destination address, least
// recently used first out.
const DefaultSessionCacheSize = 1024

func newOptions(opts []Option) options {
	var o options
	for _, f := range opts {
		f(&o)
	}
	return o
}

// resumeMargin is how long before its peer's certificate expires a
// session stops being resumed. crypto/tls checks the expiry when it picks
// a session (client) or accepts one (server), and VerifyConnection checks
// again a round trip later: without a margin, a session picked a moment
// before the expiry would be refused a moment after it, failing the
// connection where a full handshake (with the peer's renewed certificate)
// would have succeeded.
const resumeMargin = 5 * time.Second

// resumeClock is the tls.Config.Time of our configs: the clock, ahead by
// resumeMargin. crypto/tls uses it only for session and ticket-key
// lifetimes (the certificate checks are ours, on the true clock), which it
// thus ends resumeMargin early.
func (o options) resumeClock() func() time.Time {
	return func() time.Time { return o.time().Add(resumeMargin) }
}

func (o options) time() time.Time {
	if o.now != nil {
		return o.now()
	}
	return time.Now()
}
