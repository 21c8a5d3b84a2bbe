package discovery

import (
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// cacheKey names a cached answer: the question, and whether DNSSEC
// records were asked for (they change the answer).
type cacheKey struct {
	name   string // lower case, fully qualified
	qtype  uint16
	qclass uint16
	do     bool
}

// cacheEntry is an upstream's answer and when it expires.
type cacheEntry struct {
	msg     *dns.Msg
	stored  time.Time
	expires time.Time
}

// cache keeps upstream answers for their TTL (RFC 1035 §3.2.1): a positive
// answer for the smallest TTL of its records, a negative one (NXDOMAIN, or
// NOERROR with no answer) for the SOA's minimum or its TTL, whichever is
// smaller (RFC 2308 §5). Answers without a TTL to go by are not kept.
type cache struct {
	mu      sync.Mutex
	entries map[cacheKey]*cacheEntry
	max     int
}

func newCache(max int) *cache {
	return &cache{entries: make(map[cacheKey]*cacheEntry), max: max}
}

func keyOf(q dns.Question, do bool) cacheKey {
	return cacheKey{name: strings.ToLower(dns.Fqdn(q.Name)), qtype: q.Qtype, qclass: q.Qclass, do: do}
}

// get returns a copy of the cached answer for k with its TTLs aged by the
// time it has been kept, or nil.
func (c *cache) get(k cacheKey, now time.Time) *dns.Msg {
	c.mu.Lock()
	e, ok := c.entries[k]
	if ok && !now.Before(e.expires) {
		delete(c.entries, k)
		ok = false
	}
	c.mu.Unlock()
	if !ok {
		return nil
	}
	m := e.msg.Copy()
	age := uint32(now.Sub(e.stored) / time.Second)
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			if h.Rrtype == dns.TypeOPT {
				continue
			}
			if h.Ttl > age {
				h.Ttl -= age
			} else {
				h.Ttl = 0
			}
		}
	}
	return m
}

// put keeps m, the answer to k, for as long as its TTLs allow.
func (c *cache) put(k cacheKey, m *dns.Msg, now time.Time) {
	ttl, ok := cacheTTL(m)
	if !ok || ttl == 0 {
		return
	}
	stored := m.Copy()
	stored.Id = 0
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, exists := c.entries[k]; !exists && len(c.entries) >= c.max {
		// Full: drop what has expired, then an arbitrary entry.
		for key, e := range c.entries {
			if !now.Before(e.expires) {
				delete(c.entries, key)
			}
		}
		for key := range c.entries {
			if len(c.entries) < c.max {
				break
			}
			delete(c.entries, key)
		}
	}
	c.entries[k] = &cacheEntry{msg: stored, stored: now, expires: now.Add(time.Duration(ttl) * time.Second)}
}

// cacheTTL is how long m may be kept, in seconds, and whether it may be at
// all: NOERROR and NXDOMAIN answers only, and not a truncated one.
func cacheTTL(m *dns.Msg) (uint32, bool) {
	if m.Truncated || (m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError) {
		return 0, false
	}
	if m.Rcode == dns.RcodeSuccess && len(m.Answer) > 0 {
		ttl, ok := uint32(0), false
		for _, rr := range m.Answer {
			if !ok || rr.Header().Ttl < ttl {
				ttl, ok = rr.Header().Ttl, true
			}
		}
		return ttl, ok
	}
	// Negative: the SOA of the authority section says for how long.
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return min(soa.Hdr.Ttl, soa.Minttl), true
		}
	}
	return 0, false
}

// len reports the number of entries (tests).
func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
