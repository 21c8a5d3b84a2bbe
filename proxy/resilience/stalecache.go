package resilience

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Fields reads a message's header fields: the values of every field line
// of a name, any case, in order. http.Header is one; a codec that keeps
// fields its own way adapts them (one slice it reuses keeps that free of
// allocation).
type Fields interface {
	Values(name string) []string
}

// Response is a response as the stale cache keeps it: its status, its
// header fields and its body.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Cacheable reports whether a response may be kept to be served, stale,
// when a later request for the same thing fails: the basics of RFC 9111
// for a shared cache that serves only after an error.
//   - The request is a GET and its Cache-Control has no no-store (§5.2.1.5).
//     If it carries Authorization, the response says public, s-maxage or
//     must-revalidate (§3.5): otherwise it may be one caller's own.
//   - The status is one cacheable by default (RFC 9110 §15.1): 200, 203,
//     204, 300, 301, 308, 404, 405, 410, 414 or 501; not 206, whose
//     ranges this cache does not combine.
//   - Its Cache-Control has no no-store, private or no-cache (with or
//     without field names: this cache cannot revalidate).
//   - It has no Set-Cookie: a cookie is for one client.
//   - It has no Vary at all: the cache's key holds no request header
//     field, so a response chosen by one (Vary: Accept-Encoding gives a
//     gzip body to those that accept it) could go to a client that
//     cannot take it. Vary: * is the same refusal.
//   - Its directives let it be served at some age past the one it has
//     (its Age field; see StaleCache.Put): must-revalidate with no
//     max-age does not, nor max-age=60, stale-if-error=30 with Age: 90.
//
// resp is the response's fields; req the request's, or nil when they are
// not at hand (the request's method is then all that is looked at). It
// allocates nothing when the Fields do not.
func Cacheable(method string, status int, req, resp Fields) bool {
	if method != http.MethodGet {
		return false
	}
	switch status {
	case 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501:
	default:
		return false
	}
	cc := parseCacheControl(resp.Values("Cache-Control"))
	if cc.noStore || cc.private || cc.noCache {
		return false
	}
	if req != nil {
		if parseCacheControl(req.Values("Cache-Control")).noStore {
			return false
		}
		if len(req.Values("Authorization")) > 0 && !cc.public && !cc.mustRevalidate && cc.sMaxAge < 0 {
			return false
		}
	}
	if len(resp.Values("Set-Cookie")) > 0 {
		return false
	}
	for _, v := range resp.Values("Vary") {
		if trimOWS(v) != "" {
			return false
		}
	}
	return cc.limit() > ageOf(resp)
}

// ageOf is the Age field of a response (RFC 9111 §5.1): 0 when it has
// none or a bad one; the first line if it has several.
func ageOf(h Fields) time.Duration {
	v := h.Values("Age")
	if len(v) == 0 {
		return 0
	}
	s := trimOWS(v[0])
	if !isDigits(s) {
		return 0
	}
	return time.Duration(deltaSeconds(s)) * time.Second
}

// StaleWarning is the Warning field value (RFC 7234 §5.5.1) of a stale
// response. RFC 9111 made Warning obsolete; clients that read it know
// what it says, others ignore it.
const StaleWarning = `110 - "Response is Stale"`

// StaleFields are the values of the fields a response served from the
// stale cache carries, given the age Get returned: Age (set, replacing
// any), its whole seconds; and Warning (added), StaleWarning.
func StaleFields(age time.Duration) (ageValue, warning string) {
	return strconv.FormatInt(int64(max(age, 0)/time.Second), 10), StaleWarning
}

// The bytes counted for an entry beyond its key, fields and body: the
// map and list entries, the Response, each value's string and slice
// headers. An estimate, so that many small entries are bounded too.
const (
	entryOverhead = 256
	valueOverhead = 40
)

// StaleCache keeps the last good response of each cacheable request, to
// answer with when a later request for the same thing fails or finds the
// circuit open (a stale-if-error fallback). A key is whatever names the
// response; the caller builds it from the method, authority, path and
// query. It holds at most maxBytes (an estimate of the memory taken: key,
// fields, body and some overhead), dropping the least recently used
// entries first; it does not keep an entry over maxEntryBytes; and it
// never serves an entry older than maxAge, or older than the response's
// Cache-Control allows (see Put).
//
// Safe for concurrent use. Get allocates nothing; Put copies the
// response. Wants tells the caller when a Put would be wasted, before it
// buffers a body for one.
type StaleCache struct {
	maxBytes, maxEntry int64
	maxAge             time.Duration

	mu    sync.Mutex
	lru   *simplelru.LRU[string, *staleEntry] // guarded by mu
	bytes int64                               // of the entries in lru; guarded by mu
}

type staleEntry struct {
	resp    Response
	stored  time.Time     // when Put
	initial time.Duration // its Age field then
	limit   time.Duration // the most age it may be served at
	size    int64
}

// age is the entry's age at now (RFC 9111 §4.2.3, with the response
// delay taken as nought): its Age field when stored plus the time since.
func (e *staleEntry) age(now time.Time) time.Duration {
	d := max(now.Sub(e.stored), 0)
	if d > noLimit-e.initial {
		return noLimit
	}
	return e.initial + d
}

// NewStaleCache returns an empty cache of at most maxBytes, entries of
// at most maxEntryBytes (and maxBytes), none served older than maxAge.
// It panics if a bound is not positive: a config validator refuses it.
func NewStaleCache(maxBytes, maxEntryBytes int64, maxAge time.Duration) *StaleCache {
	if maxBytes <= 0 || maxEntryBytes <= 0 || maxAge <= 0 {
		panic(fmt.Sprintf("resilience: NewStaleCache(%d, %d, %v): want positive bounds", maxBytes, maxEntryBytes, maxAge))
	}
	// Bounded by bytes, not entries: the count is evicted by hand.
	lru, err := simplelru.NewLRU[string, *staleEntry](math.MaxInt, nil)
	if err != nil {
		panic("resilience: " + err.Error()) // only for a size <= 0
	}
	return &StaleCache{maxBytes: maxBytes, maxEntry: min(maxEntryBytes, maxBytes), maxAge: maxAge, lru: lru}
}

// refreshAfter is how old an entry is before Wants asks for a newer one.
// A fallback a second older is as good: a busy destination is not copied
// on every response.
const refreshAfter = time.Second

// Wants reports whether a response for key is worth a Put at now: not
// when the one kept was stored less than a second ago. The caller asks
// before it buffers the body.
func (c *StaleCache) Wants(key string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lru.Peek(key)
	return !ok || now.Sub(e.stored) >= refreshAfter
}

// Put keeps a copy of r, received at now, as the response for key, in
// place of any before: the caller has checked it is Cacheable, and r's
// Body is all of it. Its Age field is not kept but counted in the age
// Get returns. It will be served up to the age its Cache-Control allows
// after an error, and never above maxAge:
//   - with must-revalidate, proxy-revalidate or s-maxage, only while
//     fresh: up to s-maxage, else max-age, else never;
//   - with stale-if-error=N, up to max-age (or s-maxage) plus N seconds;
//   - otherwise up to maxAge.
//
// A response too large, or that may never be served, is not kept, and
// the entry for key before it is dropped: the cache never serves a
// response older than one it has turned down.
func (c *StaleCache) Put(key string, r Response, now time.Time) {
	initial := ageOf(r.Header)
	limit := min(parseCacheControl(r.Header.Values("Cache-Control")).limit(), c.maxAge)
	size := int64(entryOverhead + len(key) + len(r.Body))
	values := 0
	for k, vs := range r.Header {
		if k == "Age" {
			continue
		}
		size += int64(len(k))
		for _, v := range vs {
			size += int64(len(v)) + valueOverhead
		}
		values += len(vs)
	}

	var e *staleEntry
	if size <= c.maxEntry && initial < limit {
		e = &staleEntry{
			resp:    Response{Status: r.Status, Header: copyHeader(r.Header, values), Body: append([]byte(nil), r.Body...)},
			stored:  now,
			initial: initial,
			limit:   limit,
			size:    size,
		}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.lru.Peek(key); ok {
		c.lru.Remove(key)
		c.bytes -= old.size
	}
	if e == nil {
		return
	}
	c.lru.Add(key, e)
	c.bytes += size
	for c.bytes > c.maxBytes {
		_, old, _ := c.lru.RemoveOldest()
		c.bytes -= old.size
	}
}

// copyHeader copies h but its Age field, the values of all fields in one
// array. Each field's slice is capped at its length, so an append to one
// by whoever holds the copy does not write into the next.
func copyHeader(h http.Header, values int) http.Header {
	c := make(http.Header, len(h))
	all := make([]string, 0, values)
	for k, vs := range h {
		if k == "Age" {
			continue
		}
		n := len(all)
		all = append(all, vs...)
		c[k] = all[n:len(all):len(all)]
	}
	return c
}

// Get returns the response kept for key and its age at now, if there is
// one it may still serve. The Response is the cache's own: read it, do
// not change it (its Header and Body are shared with every other Get).
// The answer carries StaleFields(age).
func (c *StaleCache) Get(key string, now time.Time) (r Response, age time.Duration, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lru.Get(key)
	if !ok {
		return Response{}, 0, false
	}
	age = e.age(now)
	if age > e.limit {
		c.lru.Remove(key)
		c.bytes -= e.size
		return Response{}, 0, false
	}
	return e.resp, age, true
}

// Len is how many responses the cache holds.
func (c *StaleCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// Bytes is the bytes the responses held count for (see StaleCache).
func (c *StaleCache) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}
