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

func (o options) time() time.Time {
	if o.now != nil {
		return o.now()
	}
	return time.Now()
}
