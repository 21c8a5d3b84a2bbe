package ratelimit

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
	"sigs.k8s.io/yaml"
)

// redisServer is a redis-server of one test on a loopback port.
type redisServer struct {
	t    testing.TB
	addr string
	mu   sync.Mutex
	cmd  *exec.Cmd
}

// startRedis starts a redis-server on a free loopback port, stopped at
// cleanup. It skips the test in -short mode or without redis-server.
func startRedis(t testing.TB) *redisServer {
	t.Helper()
	if testing.Short() {
		t.Skip("needs redis-server; not in -short mode")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("no redis-server installed")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := &redisServer{t: t, addr: addr}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *redisServer) start() {
	s.t.Helper()
	_, port, _ := net.SplitHostPort(s.addr)
	cmd := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.t.TempDir())
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	c := redis.NewClient(&redis.Options{Addr: s.addr, MaxRetries: -1})
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if c.Ping(context.Background()).Err() == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server on %s did not answer in 10s", s.addr)
		}
	}
}

func (s *redisServer) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		s.cmd = nil
	}
}

func newRedis(t testing.TB, c RedisConfig) *Redis {
	t.Helper()
	r, err := NewRedis(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// TestGlobalExact drives requests through three sidecars sharing one
// server, one every 10ms of a fake clock, in turn: each decision is
// Local's (the token bucket GCRA is equivalent to) and the total is the
// GCRA expectation exactly.
func TestGlobalExact(t *testing.T) {
	s := startRedis(t)
	r := mustRate(t, "600/m")
	l := Limit{Name: "api", Key: SourceIdentity, Rate: r, Burst: 10}
	var gs []*Global
	now := t0
	for range 3 {
		g := NewGlobal(l, newRedis(t, RedisConfig{Address: s.addr, Timeout: Duration(time.Second)}))
		g.clock = func() time.Time { return now }
		gs = append(gs, g)
	}
	ref := New(l)
	const n = 1000 // 10s at 100/s
	allowed := 0
	for i := range n {
		now = t0.Add(time.Duration(i) * 10 * time.Millisecond)
		d := gs[i%3].Allow(context.Background(), "web")
		if d.Source != FromRedis || d.Err != nil {
			t.Fatalf("request %d: %s, %v", i, d.Source, d.Err)
		}
		want := ref.Allow("web", now)
		want.Source = FromRedis
		if diff := cmp.Diff(want, d); diff != "" {
			t.Fatalf("request %d at %v (-local +global):\n%s", i, now.Sub(t0), diff)
		}
		if d.Allowed {
			allowed++
		}
	}
	// GCRA: the burst at once, then one per emission interval (100ms)
	// over the 9.99s after the first request.
	if want := 10 + 99; allowed != want {
		t.Errorf("%d allowed; want %d", allowed, want)
	}
}

// TestGlobalShared: two sidecars on the server's clock share one quota,
// each key value its own, and the key expires once its bucket is full.
func TestGlobalShared(t *testing.T) {
	s := startRedis(t)
	l := Limit{Name: "per-caller", Key: SourceIdentity, Rate: mustRate(t, "1/h"), Burst: 5,
		Overrides: []Override{{Value: "batch", Rate: mustRate(t, "1/h"), Burst: 8}}}
	a := NewGlobal(l, newRedis(t, RedisConfig{Address: s.addr, Timeout: Duration(time.Second)}))
	b := NewGlobal(l, newRedis(t, RedisConfig{Address: s.addr, Timeout: Duration(time.Second), KeyPrefix: DefaultKeyPrefix}))
	for _, tc := range []struct {
		key   string
		burst int
	}{{"web", 5}, {"batch", 8}} {
		allowed := 0
		for i := range 20 {
			g := a
			if i%2 == 1 {
				g = b
			}
			d := g.Allow(context.Background(), tc.key)
			if d.Source != FromRedis {
				t.Fatalf("%s %d: %s, %v", tc.key, i, d.Source, d.Err)
			}
			if d.Allowed {
				allowed++
			} else if d.RetryAfter <= 0 || d.RetryAfter > time.Hour || d.Remaining != 0 {
				t.Errorf("%s %d refused: %+v", tc.key, i, d)
			}
		}
		if allowed != tc.burst {
			t.Errorf("%s: %d allowed by two sidecars; want the shared burst %d", tc.key, allowed, tc.burst)
		}
	}
	c := redis.NewClient(&redis.Options{Addr: s.addr})
	defer c.Close()
	ttl, err := c.PTTL(context.Background(), "meshgate:rl:per-caller:web").Result()
	if err != nil || ttl <= 4*time.Hour || ttl > 5*time.Hour {
		t.Errorf("TTL of the web bucket: %v, %v; want about 5h (the burst's refill)", ttl, err)
	}
}

func TestGlobalPasswordFile(t *testing.T) {
	_, err := NewRedis(RedisConfig{Address: "127.0.0.1:1", PasswordFile: filepath.Join(t.TempDir(), "none")})
	if err == nil || !strings.HasPrefix(err.Error(), "redis.passwordFile: ") {
		t.Errorf("missing password file: %v", err)
	}
	s := startRedis(t)
	c := redis.NewClient(&redis.Options{Addr: s.addr})
	defer c.Close()
	if err := c.ConfigSet(context.Background(), "requirepass", "s3cret").Err(); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(f, []byte("s3cret\n"), 0o600)
	l := Limit{Name: "a", Key: SourceIP, Rate: mustRate(t, "10/s")}
	if d := NewGlobal(l, newRedis(t, RedisConfig{Address: s.addr, PasswordFile: f, Timeout: Duration(time.Second)})).Allow(context.Background(), "x"); d.Source != FromRedis {
		t.Errorf("with the password: %s, %v", d.Source, d.Err)
	}
	if d := NewGlobal(l, newRedis(t, RedisConfig{Address: s.addr, Timeout: Duration(time.Second)})).Allow(context.Background(), "x"); d.Source != FromFallback || d.Err == nil {
		t.Errorf("without: %s, %v", d.Source, d.Err)
	}
}

// TestGlobalOnError stops the server mid-test: each onError applies, each
// decision in time, and decisions come from Redis again once it is back.
func TestGlobalOnError(t *testing.T) {
	s := startRedis(t)
	l := Limit{Name: "api", Key: SourceIdentity, Rate: mustRate(t, "60/m"), Burst: 10}
	mk := func(on OnError) *Global {
		return NewGlobal(l, newRedis(t, RedisConfig{Address: s.addr, OnError: on, Instances: 2, Timeout: Duration(50 * time.Millisecond)}))
	}
	open, closed, local := mk(""), mk(FailClosed), mk(FailLocal)
	for _, g := range []*Global{open, closed, local} {
		if d := g.Allow(context.Background(), "warm"); d.Source != FromRedis || !d.Allowed {
			t.Fatalf("before the stop: %+v", d)
		}
	}
	s.stop()
	decide := func(g *Global, key string) Decision {
		t.Helper()
		start := time.Now()
		d := g.Allow(context.Background(), key)
		if took := time.Since(start); took > 200*time.Millisecond {
			t.Errorf("a decision without Redis took %v; want about the timeout (50ms) at most", took)
		}
		if d.Source != FromFallback || d.Err == nil {
			t.Errorf("without Redis: source %q, error %v; want fallback and an error", d.Source, d.Err)
		}
		return d
	}
	for i := range 20 {
		if d := decide(open, "web"); !d.Allowed {
			t.Errorf("failOpen %d refused: %+v", i, d)
		}
		if d := decide(closed, "web"); d.Allowed || d.RetryAfter != time.Second {
			t.Errorf("failClosed %d: %+v; want refused, retry after 1s", i, d)
		}
	}
	// local: this sidecar's half of 60/m, burst 10: a burst of 5.
	allowed := 0
	for range 20 {
		d := decide(local, "web")
		if d.Allowed {
			allowed++
		}
		if want := (Rate{N: 60, Window: 2 * time.Minute}); d.Limit != want || d.Burst != 5 {
			t.Errorf("local share: %v burst %d; want %v burst 5", d.Limit, d.Burst, want)
		}
	}
	if allowed != 5 {
		t.Errorf("local share allowed %d; want 5", allowed)
	}

	s.start()
	for _, g := range []*Global{open, closed, local} {
		deadline := time.Now().Add(10 * time.Second)
		for g.Allow(context.Background(), "again").Source != FromRedis {
			if time.Now().After(deadline) {
				t.Fatal("no decision from Redis 10s after it came back")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestGlobalTimeout: a server that never answers costs a decision the
// timeout, no more.
func TestGlobalTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for timeouts")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var conns []net.Conn
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // read nothing, answer nothing
			mu.Unlock()
		}
	}()
	g := NewGlobal(Limit{Name: "a", Key: SourceIP, Rate: mustRate(t, "10/s")},
		newRedis(t, RedisConfig{Address: ln.Addr().String(), OnError: FailClosed, Timeout: Duration(20 * time.Millisecond)}))
	for range 5 {
		start := time.Now()
		d := g.Allow(context.Background(), "x")
		took := time.Since(start)
		var ne net.Error
		timedOut := errors.Is(d.Err, context.DeadlineExceeded) || errors.As(d.Err, &ne) && ne.Timeout()
		if d.Allowed || d.Source != FromFallback || !timedOut {
			t.Errorf("%+v; want refused by the fallback after the deadline", d)
		}
		if took > 200*time.Millisecond {
			t.Errorf("took %v; want about the timeout (20ms)", took)
		}
	}
}

func TestShareString(t *testing.T) {
	l := share(Limit{Rate: mustRate(t, "50/s"), Overrides: []Override{{Value: "x", Rate: mustRate(t, "7/m"), Burst: 7}}}, 3)
	if got := l.Rate.String(); got != "50/3s" || l.Burst != 17 {
		t.Errorf("share of 50/s: %s burst %d; want 50/3s burst 17", got, l.Burst)
	}
	if o := l.Overrides[0]; o.Rate.String() != "7/3m0s" || o.Burst != 3 {
		t.Errorf("share of the override: %s burst %d", o.Rate, o.Burst)
	}
}

func TestRedisConfigDecode(t *testing.T) {
	var c RedisConfig
	doc := `{address: "redis.shop:6379", username: mesh, passwordFile: /etc/pw, tls: true, keyPrefix: "x:", onError: local, timeout: 10ms, instances: 3}`
	if err := yaml.UnmarshalStrict([]byte(doc), &c); err != nil {
		t.Fatal(err)
	}
	want := RedisConfig{Address: "redis.shop:6379", Username: "mesh", PasswordFile: "/etc/pw", TLS: true,
		KeyPrefix: "x:", OnError: FailLocal, Timeout: Duration(10 * time.Millisecond), Instances: 3}
	if d := cmp.Diff(want, c); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
	if err := yaml.Unmarshal([]byte(`{timeout: 5}`), &c); err == nil || !strings.HasSuffix(err.Error(), `5 is not a duration; want a number with a unit, e.g. "5s" or "1m30s"`) {
		t.Errorf("bare number: %v", err)
	}
	d := RedisConfig{Address: "a:1"}.withDefaults()
	if d.KeyPrefix != "meshgate:rl:" || d.OnError != FailOpen || d.Timeout.D() != 5*time.Millisecond || d.Instances != 1 {
		t.Errorf("defaults: %+v", d)
	}
}

func TestValidateWithRedis(t *testing.T) {
	limits := []Limit{
		{Name: "a", Key: SourceIP, Rate: mustRate(t, "5/s")},
		{Name: "b", Key: SourceIP, Rate: mustRate(t, "5/s"), Global: true},
		{Name: "c", Key: Route, Rate: Rate{}, Global: true},
	}
	for _, tc := range []struct {
		name   string
		limits []Limit
		redis  *RedisConfig
		want   []string
	}{
		{name: "no global, no redis", limits: limits[:1]},
		{name: "global with redis", limits: limits[:2], redis: &RedisConfig{Address: "127.0.0.1:6379"}},
		{name: "global without redis", limits: limits, want: []string{
			`rateLimits[1].global: true, but there is no redis section to count it in; add redis: {address: HOST:PORT}, or set global: false`,
			`rateLimits[2].global: true, but there is no redis section to count it in; add redis: {address: HOST:PORT}, or set global: false`,
			`rateLimits[2].rate: missing; want N/s, N/m, N/h or N/d, e.g. 50/s`,
		}},
		{name: "every redis problem", limits: limits[:2], redis: &RedisConfig{Username: "u", OnError: "retry", Timeout: Duration(-time.Second), Instances: -1, KeyPrefix: "a b"}, want: []string{
			`redis.address: missing; want the server's host:port, e.g. 127.0.0.1:6379`,
			`redis.passwordFile: missing; username "u" needs a password: name the file that holds it`,
			`redis.onError: "retry": want failOpen, failClosed or local`,
			`redis.timeout: -1s: want a positive duration, or leave it out for 5ms`,
			`redis.instances: -1: want the number of sidecars sharing the limits, or leave it out for 1`,
			`redis.keyPrefix: "a b" has white space; want e.g. meshgate:rl:`,
		}},
		{name: "no port", redis: &RedisConfig{Address: "redis.shop"}, want: []string{
			`redis.address: "redis.shop": want host:port, e.g. 127.0.0.1:6379`}},
		{name: "bad port", redis: &RedisConfig{Address: "redis.shop:99999", Timeout: Duration(time.Minute)}, want: []string{
			`redis.address: "redis.shop:99999": port "99999" is not a number from 1 to 65535`,
			`redis.timeout: 1m0s is more than 10s; every request limited globally may wait this long`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateWithRedis(tc.limits, tc.redis)
			var got []string
			if err != nil {
				got = strings.Split(err.Error(), "\n")
			}
			if d := cmp.Diff(sortedCopy(tc.want), sortedCopy(got)); d != "" {
				t.Errorf("problems (-want +got):\n%s", d)
			}
		})
	}
	if err := Validate(limits[:2]); err != nil {
		t.Errorf("Validate looks at global: %v", err)
	}
}

func BenchmarkGlobalAllow(b *testing.B) {
	s := startRedis(b)
	g := NewGlobal(Limit{Name: "a", Key: SourceIdentity, Rate: mustRate(b, "1000000/s")},
		newRedis(b, RedisConfig{Address: s.addr, Timeout: Duration(time.Second)}))
	ctx := context.Background()
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		if d := g.Allow(ctx, "spiffe://cluster.local/ns/shop/sa/web"); d.Source != FromRedis {
			b.Fatal(d.Err)
		}
	}
	b.ReportMetric(float64(time.Since(start).Microseconds())/float64(b.N), "µs/op")
}
