package resilience

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestCacheable(t *testing.T) {
	ok := http.Header{"Content-Type": {"application/json"}}
	hdr := func(kv ...string) http.Header {
		h := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Add(kv[i], kv[i+1])
		}
		return h
	}
	for _, tc := range []struct {
		name   string
		method string
		status int
		req    Fields // nil: none
		resp   http.Header
		want   bool
	}{
		{"plain 200", "GET", 200, nil, ok, true},
		{"no fields", "GET", 200, nil, http.Header{}, true},
		{"with request fields", "GET", 200, hdr("Accept", "*/*"), ok, true},
		{"HEAD", "HEAD", 200, nil, ok, false},
		{"POST", "POST", 200, nil, ok, false},
		{"lower-case get", "get", 200, nil, ok, false},
		{"203", "GET", 203, nil, ok, true},
		{"204", "GET", 204, nil, ok, true},
		{"300", "GET", 300, nil, ok, true},
		{"301", "GET", 301, nil, ok, true},
		{"308", "GET", 308, nil, ok, true},
		{"404", "GET", 404, nil, ok, true},
		{"405", "GET", 405, nil, ok, true},
		{"410", "GET", 410, nil, ok, true},
		{"414", "GET", 414, nil, ok, true},
		{"501", "GET", 501, nil, ok, true},
		{"201", "GET", 201, nil, ok, false},
		{"206 partial", "GET", 206, nil, ok, false},
		{"302", "GET", 302, nil, ok, false},
		{"304", "GET", 304, nil, ok, false},
		{"500", "GET", 500, nil, ok, false},
		{"503", "GET", 503, nil, ok, false},
		{"no-store", "GET", 200, nil, hdr("Cache-Control", "no-store"), false},
		{"no-store in a second line", "GET", 200, nil, hdr("Cache-Control", "max-age=60", "Cache-Control", "No-Store"), false},
		{"private", "GET", 200, nil, hdr("Cache-Control", "private, max-age=60"), false},
		{"private with fields", "GET", 200, nil, hdr("Cache-Control", `private="X-User"`), false},
		{"no-cache", "GET", 200, nil, hdr("Cache-Control", "no-cache"), false},
		{"public", "GET", 200, nil, hdr("Cache-Control", "public, max-age=60"), true},
		{"Set-Cookie", "GET", 200, nil, hdr("Set-Cookie", "session=abc"), false},
		{"Vary *", "GET", 200, nil, hdr("Vary", "*"), false},
		{"Vary by a field", "GET", 200, nil, hdr("Vary", "Accept-Encoding"), false},
		{"empty Vary", "GET", 200, nil, hdr("Vary", ""), true},
		{"must-revalidate without lifetime", "GET", 200, nil, hdr("Cache-Control", "must-revalidate"), false},
		{"must-revalidate with lifetime", "GET", 200, nil, hdr("Cache-Control", "must-revalidate, max-age=60"), true},
		{"max-age=0, stale-if-error=0", "GET", 200, nil, hdr("Cache-Control", "max-age=0, stale-if-error=0"), false},
		{"stale-if-error", "GET", 200, nil, hdr("Cache-Control", "stale-if-error=60"), true},
		{"older than it may be served", "GET", 200, nil, hdr("Cache-Control", "max-age=60, stale-if-error=60", "Age", "120"), false},
		{"younger than that", "GET", 200, nil, hdr("Cache-Control", "max-age=60, stale-if-error=60", "Age", "119"), true},
		{"request no-store", "GET", 200, hdr("Cache-Control", "no-store"), ok, false},
		{"request no-cache", "GET", 200, hdr("Cache-Control", "no-cache"), ok, true},
		{"Authorization", "GET", 200, hdr("Authorization", "Bearer x"), ok, false},
		{"Authorization, public", "GET", 200, hdr("Authorization", "Bearer x"), hdr("Cache-Control", "public"), true},
		{"Authorization, s-maxage", "GET", 200, hdr("Authorization", "Bearer x"), hdr("Cache-Control", "s-maxage=60"), true},
		{"Authorization, must-revalidate", "GET", 200, hdr("Authorization", "Bearer x"), hdr("Cache-Control", "must-revalidate, max-age=5"), true},
		{"Authorization, max-age alone", "GET", 200, hdr("Authorization", "Bearer x"), hdr("Cache-Control", "max-age=60"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Cacheable(tc.method, tc.status, tc.req, tc.resp); got != tc.want {
				t.Errorf("Cacheable(%s, %d, %v, %v) = %v; want %v", tc.method, tc.status, tc.req, tc.resp, got, tc.want)
			}
		})
	}
}

func TestStaleFields(t *testing.T) {
	for _, tc := range []struct {
		age  time.Duration
		want string
	}{
		{0, "0"},
		{999 * time.Millisecond, "0"},
		{90*time.Second + 999*time.Millisecond, "90"},
		{-time.Second, "0"},
	} {
		age, warning := StaleFields(tc.age)
		if age != tc.want || warning != `110 - "Response is Stale"` {
			t.Errorf("StaleFields(%v) = %q, %q; want %q, the 110 warning", tc.age, age, warning, tc.want)
		}
	}
}

func resp(body string, kv ...string) Response {
	h := http.Header{"Content-Type": {"text/plain"}}
	for i := 0; i < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return Response{Status: 200, Header: h, Body: []byte(body)}
}

func TestStaleCachePutGet(t *testing.T) {
	c := NewStaleCache(1<<20, 64<<10, time.Hour)
	r := resp("hello", "X-A", "1", "X-A", "2")
	c.Put("GET api/items", r, t0)
	got, age, ok := c.Get("GET api/items", t0.Add(90*time.Second))
	if !ok {
		t.Fatal("nothing kept")
	}
	if diff := cmp.Diff(r, got); diff != "" {
		t.Errorf("response (-put +got):\n%s", diff)
	}
	if age != 90*time.Second {
		t.Errorf("age %v; want 90s", age)
	}
	if _, _, ok := c.Get("GET api/other", t0); ok {
		t.Error("a key never put was found")
	}
	// The cache keeps a copy: what the caller does with its buffers
	// after Put does not change it.
	r.Body[0] = 'J'
	r.Header["X-A"][0] = "changed"
	r.Header.Set("X-New", "1")
	got, _, _ = c.Get("GET api/items", t0)
	if string(got.Body) != "hello" || got.Header.Get("X-A") != "1" || got.Header.Get("X-New") != "" {
		t.Errorf("the kept response changed with the caller's: %q %v", got.Body, got.Header)
	}
	// And appending to a value list it returns does not write into
	// another field's.
	got.Header["Content-Type"] = append(got.Header["Content-Type"], "x")
	again, _, _ := c.Get("GET api/items", t0)
	if diff := cmp.Diff([]string{"1", "2"}, again.Header["X-A"]); diff != "" {
		t.Errorf("X-A after an append to Content-Type (-want +got):\n%s", diff)
	}
}

func TestStaleCacheReplace(t *testing.T) {
	c := NewStaleCache(1<<20, 64<<10, time.Hour)
	c.Put("k", resp("old"), t0)
	c.Put("k", resp("new!"), t0.Add(time.Minute))
	got, age, ok := c.Get("k", t0.Add(time.Minute+time.Second))
	if !ok || string(got.Body) != "new!" || age != time.Second {
		t.Fatalf("Get = %q, %v, %v; want the new one, 1s old", got.Body, age, ok)
	}
	if c.Len() != 1 {
		t.Errorf("Len = %d; want 1", c.Len())
	}
	one := c.Bytes()
	c.Put("k", resp("new!"), t0.Add(time.Minute))
	if c.Bytes() != one {
		t.Errorf("Bytes %d after putting the same again; was %d", c.Bytes(), one)
	}
}

// size is what an entry of key and r counts for.
func size(key string, r Response) int64 {
	n := int64(entryOverhead + len(key) + len(r.Body))
	for k, vs := range r.Header {
		if k == "Age" {
			continue
		}
		n += int64(len(k))
		for _, v := range vs {
			n += int64(len(v)) + valueOverhead
		}
	}
	return n
}

func TestStaleCacheBytesBound(t *testing.T) {
	body := string(bytes.Repeat([]byte("x"), 1000))
	one := size("k0", resp(body))
	c := NewStaleCache(3*one, 64<<10, time.Hour)
	for i := range 3 {
		c.Put(fmt.Sprint("k", i), resp(body), t0)
	}
	if c.Len() != 3 || c.Bytes() != 3*one {
		t.Fatalf("Len %d, Bytes %d; want 3, %d", c.Len(), c.Bytes(), 3*one)
	}
	// k0 is used, so k1 is the least recently used: the fourth pushes
	// it out.
	if _, _, ok := c.Get("k0", t0); !ok {
		t.Fatal("k0 not kept")
	}
	c.Put("k3", resp(body), t0)
	for key, want := range map[string]bool{"k0": true, "k1": false, "k2": true, "k3": true} {
		if _, _, ok := c.Get(key, t0); ok != want {
			t.Errorf("%s kept: %v; want %v", key, ok, want)
		}
	}
	if c.Bytes() > 3*one {
		t.Errorf("Bytes %d over the bound %d", c.Bytes(), 3*one)
	}
	// A big one pushes out as many as it takes.
	big := resp(string(bytes.Repeat([]byte("y"), int(2*one))))
	c.Put("big", big, t0)
	if c.Bytes() > 3*one || c.Len() != 1 {
		t.Errorf("after a 2-entry put: Len %d, Bytes %d; want 1, at most %d", c.Len(), c.Bytes(), 3*one)
	}
}

func TestStaleCacheEntryBound(t *testing.T) {
	small := resp("ok")
	c := NewStaleCache(1<<20, size("k", small), time.Hour)
	c.Put("k", small, t0)
	if _, _, ok := c.Get("k", t0); !ok {
		t.Fatal("an entry of exactly the per-entry bound was not kept")
	}
	// One byte more is not kept, and drops the older one: the cache
	// serves nothing older than a response it turned down.
	c.Put("k", resp("ok!"), t0.Add(time.Second))
	if _, _, ok := c.Get("k", t0.Add(time.Second)); ok {
		t.Error("an entry over the per-entry bound was kept, or the old one stayed")
	}
	if c.Len() != 0 || c.Bytes() != 0 {
		t.Errorf("Len %d, Bytes %d; want 0, 0", c.Len(), c.Bytes())
	}
	// The per-entry bound is at most the whole bound.
	c = NewStaleCache(size("k", small), 1<<20, time.Hour)
	c.Put("k", resp("ok!"), t0)
	if c.Len() != 0 {
		t.Error("an entry larger than the cache was kept")
	}
}

func TestStaleCacheAges(t *testing.T) {
	const maxAge = 10 * time.Minute
	for _, tc := range []struct {
		name        string
		fields      []string
		servedUntil time.Duration // after Put; 0: not kept
		firstAge    time.Duration // Get's age at Put
	}{
		{"no directives: maxAge", nil, maxAge, 0},
		{"max-age alone: maxAge", []string{"Cache-Control", "max-age=60"}, maxAge, 0},
		{"stale-if-error caps it", []string{"Cache-Control", "max-age=60, stale-if-error=30"}, 90 * time.Second, 0},
		{"maxAge caps stale-if-error", []string{"Cache-Control", "stale-if-error=86400"}, maxAge, 0},
		{"must-revalidate: while fresh", []string{"Cache-Control", "max-age=60, must-revalidate"}, time.Minute, 0},
		{"s-maxage: while fresh", []string{"Cache-Control", "s-maxage=20, max-age=60"}, 20 * time.Second, 0},
		{"Age counts", []string{"Age", "30", "Cache-Control", "max-age=60, stale-if-error=30"}, time.Minute, 30 * time.Second},
		{"Age counts against maxAge", []string{"Age", "120"}, maxAge - 2*time.Minute, 2 * time.Minute},
		{"bad Age is 0", []string{"Age", "soon"}, maxAge, 0},
		{"already too old", []string{"Age", "90", "Cache-Control", "max-age=60, stale-if-error=30"}, 0, 0},
		{"never servable", []string{"Cache-Control", "must-revalidate"}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewStaleCache(1<<20, 64<<10, maxAge)
			r := resp("body", tc.fields...)
			c.Put("k", r, t0)
			if tc.servedUntil == 0 {
				if c.Len() != 0 {
					t.Fatal("kept a response it may never serve")
				}
				return
			}
			got, age, ok := c.Get("k", t0)
			if !ok || age != tc.firstAge {
				t.Fatalf("Get at Put = %v, %v; want kept, age %v", age, ok, tc.firstAge)
			}
			if got.Header.Get("Age") != "" {
				t.Errorf("kept the Age field %q: StaleFields gives the new one", got.Header.Get("Age"))
			}
			if _, age, ok := c.Get("k", t0.Add(tc.servedUntil)); !ok || age != tc.firstAge+tc.servedUntil {
				t.Errorf("Get %v after Put = %v, %v; want served, age %v", tc.servedUntil, age, ok, tc.firstAge+tc.servedUntil)
			}
			if _, _, ok := c.Get("k", t0.Add(tc.servedUntil+time.Nanosecond)); ok {
				t.Errorf("served %v after Put; want not after %v", tc.servedUntil+time.Nanosecond, tc.servedUntil)
			}
			// Dropped once too old.
			if c.Len() != 0 || c.Bytes() != 0 {
				t.Errorf("Len %d, Bytes %d after the entry expired; want 0, 0", c.Len(), c.Bytes())
			}
		})
	}
}

func TestStaleCacheWants(t *testing.T) {
	c := NewStaleCache(1<<20, 64<<10, time.Hour)
	if !c.Wants("k", t0) {
		t.Error("does not want a key it does not have")
	}
	c.Put("k", resp("x"), t0)
	if c.Wants("k", t0.Add(time.Second-1)) {
		t.Error("wants a key stored less than a second ago")
	}
	if !c.Wants("k", t0.Add(time.Second)) {
		t.Error("does not want a key stored a second ago")
	}
}

func TestNewStaleCachePanics(t *testing.T) {
	for _, args := range [][3]int64{{0, 1, 1}, {1, 0, 1}, {1, 1, 0}, {-1, 1, 1}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewStaleCache%v did not panic", args)
				}
			}()
			NewStaleCache(args[0], args[1], time.Duration(args[2]))
		}()
	}
}

func TestStaleCacheConcurrent(t *testing.T) {
	body := bytes.Repeat([]byte("z"), 500)
	one := size("key-00", Response{Status: 200, Header: http.Header{"Content-Type": {"text/plain"}}, Body: body})
	bound := 10 * one
	c := NewStaleCache(bound, 1<<20, time.Hour)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				key := "key-" + strconv.Itoa(10+(g*31+i)%40)
				now := t0.Add(time.Duration(i) * time.Millisecond)
				if i%3 == 0 {
					c.Put(key, Response{Status: 200, Header: http.Header{"Content-Type": {"text/plain"}}, Body: body}, now)
				} else if r, _, ok := c.Get(key, now); ok && !bytes.Equal(r.Body, body) {
					t.Error("a Get returned another body")
					return
				}
				if b := c.Bytes(); b > bound {
					t.Errorf("Bytes %d over the bound %d", b, bound)
					return
				}
			}
		})
	}
	wg.Wait()
	if c.Len() > 10 {
		t.Errorf("Len %d; at most 10 fit", c.Len())
	}
}

func BenchmarkStaleCacheGet(b *testing.B) {
	c := NewStaleCache(64<<20, 1<<20, time.Hour)
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = "GET api.shop.mesh/items/" + strconv.Itoa(i)
		c.Put(keys[i], resp(`{"id":1}`, "Cache-Control", "max-age=60, stale-if-error=600"), t0)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.Get(keys[i%len(keys)], t0.Add(time.Second))
		i += 7
	}
}

func BenchmarkStaleCachePut(b *testing.B) {
	c := NewStaleCache(64<<20, 1<<20, time.Hour)
	r := resp(string(bytes.Repeat([]byte("x"), 1024)), "Cache-Control", "max-age=60")
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = "GET api.shop.mesh/items/" + strconv.Itoa(i)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.Put(keys[i%len(keys)], r, t0)
		i++
	}
}

func BenchmarkStaleCacheWants(b *testing.B) {
	c := NewStaleCache(64<<20, 1<<20, time.Hour)
	c.Put("GET api.shop.mesh/items", resp("x"), t0)
	b.ReportAllocs()
	for b.Loop() {
		c.Wants("GET api.shop.mesh/items", t0.Add(time.Millisecond))
	}
}

func BenchmarkCacheable(b *testing.B) {
	req := http.Header{"Accept": {"application/json"}}
	h := http.Header{"Content-Type": {"application/json"}, "Cache-Control": {"public, max-age=60, stale-if-error=600"}}
	b.ReportAllocs()
	for b.Loop() {
		Cacheable("GET", 200, req, h)
	}
}
