package ratelimit

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"meshgate/internal/confval"
)

// RedisConfig is the redis section: the server global limits are counted
// in, and what a decision does when it cannot reach it in time.
type RedisConfig struct {
	// Address is the server's host:port, e.g. 127.0.0.1:6379.
	Address string `json:"address"`
	// Username is the ACL user; unset: the default user.
	Username string `json:"username"`
	// PasswordFile holds the password (one trailing newline is dropped);
	// read once, when the connection is made.
	PasswordFile string `json:"passwordFile"`
	// TLS speaks TLS to the server, which must present a certificate for
	// Address's host that the system trusts.
	TLS bool `json:"tls"`
	// KeyPrefix begins every key; unset: meshgate:rl:. A bucket's key is
	// the prefix, the limit's name, ':' and the key value.
	KeyPrefix string `json:"keyPrefix"`
	// OnError is what a decision is when Redis fails or is slower than
	// Timeout: failOpen (the default), failClosed or local.
	OnError OnError `json:"onError"`
	// Timeout bounds a decision's wait for Redis; unset: 5ms.
	Timeout Duration `json:"timeout"`
	// Instances is how many sidecars share the global limits: with
	// onError local, each holds 1/Instances of a limit's rate and burst
	// while Redis fails. Unset (0): 1.
	Instances int `json:"instances"`
}

// OnError is what a global limit does without Redis.
type OnError string

// The behaviours without Redis.
const (
	// FailOpen allows the request.
	FailOpen OnError = "failOpen"
	// FailClosed refuses it.
	FailClosed OnError = "failClosed"
	// FailLocal counts it in this sidecar, at its share of the limit
	// (RedisConfig.Instances).
	FailLocal OnError = "local"
)

// The defaults of the redis section.
const (
	DefaultKeyPrefix    = "meshgate:rl:"
	DefaultRedisTimeout = 5 * time.Millisecond
)

// maxRedisTimeout bounds Timeout: each request waits for it.
const maxRedisTimeout = 10 * time.Second

// Duration is a time.Duration written as a string such as "5ms"; a bare
// number is refused.
type Duration = confval.Duration

// Validate reports every problem of c at once (errors.Join, one per
// line), each with its field path under redis and the fix.
func (c *RedisConfig) Validate() error {
	v := validator{confval.Problems{Field: "redis"}}
	if c.Address == "" {
		v.Bad("address", "missing; want the server's host:port, e.g. 127.0.0.1:6379")
	} else if host, port, err := net.SplitHostPort(c.Address); err != nil || host == "" {
		v.Bad("address", "%q: want host:port, e.g. 127.0.0.1:6379", c.Address)
	} else if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		v.Bad("address", "%q: port %q is not a number from 1 to 65535", c.Address, port)
	}
	if c.Username != "" && c.PasswordFile == "" {
		v.Bad("passwordFile", "missing; username %q needs a password: name the file that holds it", c.Username)
	}
	switch c.OnError {
	case "", FailOpen, FailClosed, FailLocal:
	default:
		v.Bad("onError", "%q: want failOpen, failClosed or local", string(c.OnError))
	}
	switch t := c.Timeout.D(); {
	case t < 0:
		v.Bad("timeout", "%v: want a positive duration, or leave it out for %v", t, DefaultRedisTimeout)
	case t > maxRedisTimeout:
		v.Bad("timeout", "%v is more than %v; every request limited globally may wait this long", t, maxRedisTimeout)
	}
	if c.Instances < 0 {
		v.Bad("instances", "%d: want the number of sidecars sharing the limits, or leave it out for 1", c.Instances)
	}
	if strings.ContainsAny(c.KeyPrefix, " \t\r\n") {
		v.Bad("keyPrefix", "%q has white space; want e.g. %s", c.KeyPrefix, DefaultKeyPrefix)
	}
	return errors.Join(v.Errs...)
}

// withDefaults returns c with its unset fields set.
func (c RedisConfig) withDefaults() RedisConfig {
	if c.KeyPrefix == "" {
		c.KeyPrefix = DefaultKeyPrefix
	}
	if c.OnError == "" {
		c.OnError = FailOpen
	}
	if c.Timeout == 0 {
		c.Timeout = Duration(DefaultRedisTimeout)
	}
	if c.Instances == 0 {
		c.Instances = 1
	}
	return c
}

// ValidateWithRedis is Validate, and also checks the redis section (nil:
// there is none) and that every global limit has one. Validate alone
// does not look at global.
func ValidateWithRedis(limits []Limit, r *RedisConfig) error {
	errs := []error{Validate(limits)}
	for i, l := range limits {
		if l.Global && r == nil {
			errs = append(errs, fmt.Errorf("rateLimits[%d].global: true, but there is no redis section to count it in; add redis: {address: HOST:PORT}, or set global: false", i))
		}
	}
	if r != nil {
		errs = append(errs, r.Validate())
	}
	return errors.Join(errs...)
}

// Redis is the connection to the redis section's server, shared by the
// Global limiters of one sidecar. Safe for concurrent use.
type Redis struct {
	conf   RedisConfig // with defaults
	client *redis.Client
}

// quiet stops go-redis logging each failed dial: a Decision's Err says
// what failed, for the caller to count and log at its own pace.
var quiet sync.Once

type noLog struct{}

func (noLog) Printf(context.Context, string, ...any) {}

// NewRedis connects (lazily: the first decision dials) to the server of
// c, which Validate has accepted. It reads the password file now.
func NewRedis(c RedisConfig) (*Redis, error) {
	quiet.Do(func() { redis.SetLogger(noLog{}) })
	c = c.withDefaults()
	opt := &redis.Options{
		Addr:     c.Address,
		Username: c.Username,
		// A decision's context bounds each call (Timeout); no retries:
		// a retry could not finish in time anyway.
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		// One dial per try: go-redis's default (5, 100 ms apart) has a
		// decision wait out its whole timeout on a refused dial, where
		// it could fall back at once.
		DialerRetries:   1,
		DialTimeout:     time.Second,
		DisableIdentity: true,
		Protocol:        2,
	}
	if c.PasswordFile != "" {
		b, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("redis.passwordFile: %w", err)
		}
		opt.Password = strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	}
	if c.TLS {
		host, _, _ := net.SplitHostPort(c.Address)
		opt.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	}
	return &Redis{conf: c, client: redis.NewClient(opt)}, nil
}

// Close closes the connections.
func (r *Redis) Close() error { return r.client.Close() }

// gcra is the generic cell rate algorithm, atomic on the server: one
// round trip per decision (EVALSHA; EVAL once more after a server
// restart forgot the script). Times are microseconds of the server's
// clock (TIME), so the sidecars' clocks do not matter. The key holds the
// theoretical arrival time (TAT): when the bucket would be full again.
// A request is allowed when now >= TAT + T - burst*T, T being the
// emission interval (1/rate); it then moves TAT on by T. The key expires
// at TAT: a key gone is a full bucket.
//
// KEYS[1]: the bucket. ARGV: T (µs, may be fractional), burst, and now
// (µs; empty: the server's clock; tests only).
// Returns allowed (0/1), remaining, retry after (µs), reset (µs).
const gcra = `
local T = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now
if ARGV[3] ~= "" then
  now = tonumber(ARGV[3])
else
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local tat = tonumber(redis.call("GET", KEYS[1]) or now)
if tat < now then tat = now end
local new = tat + T
local at = new - burst * T
if now < at then
  return {0, math.floor((now + burst * T - tat) / T), math.ceil(at - now), math.ceil(tat - now)}
end
local ttl = math.max(1, math.ceil((new - now) / 1000))
redis.call("SET", KEYS[1], string.format("%.17g", new), "PX", ttl)
return {1, math.floor((now + burst * T - new) / T), 0, math.ceil(new - now)}
`

var gcraScript = redis.NewScript(gcra)

// quota counts a quota's window, atomic on the server: one round trip
// per decision, as gcra. The key holds the window's count and expires
// when the window ends: it is made, expiring a window from now, by the
// first request counted (INCR, PEXPIRE), so a window starts at its key
// value's first counted request, on the server's clock. A request is
// counted only while the count is under N: a refused one changes
// nothing. A key found without an expiry (written by something else) is
// given one, so that it cannot refuse for ever.
//
// KEYS[1]: the window. ARGV: N, the window (ms).
// Returns allowed (0/1), the count, and the time left in the window (ms).
const quota = `
local n = tonumber(ARGV[1])
local c = tonumber(redis.call("GET", KEYS[1]) or 0)
local allowed = 0
if c < n then
  c = redis.call("INCR", KEYS[1])
  allowed = 1
end
local ttl = redis.call("PTTL", KEYS[1])
if ttl < 0 then
  redis.call("PEXPIRE", KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {allowed, c, ttl}
`

var quotaScript = redis.NewScript(quota)

// Source says where a Decision came from.
type Source string

// The sources of a Global's decisions; a Local's are "".
const (
	FromRedis    Source = "redis"
	FromFallback Source = "fallback" // RedisConfig.OnError, Err says why
)

// Global is the limiter of one global Limit: every sidecar using the
// same Redis and limit name shares its buckets. Safe for concurrent use.
type Global struct {
	redis     *Redis
	name      string
	quota     bool // a quota's windows rather than buckets
	conf      bucketConf
	overrides map[string]bucketConf
	local     *Local // onError local: this sidecar's share

	clock func() time.Time // tests: a clock instead of the server's
}

// NewGlobal returns the limiter of l, which Validate has accepted,
// counted in r.
func NewGlobal(l Limit, r *Redis) *Global {
	g := &Global{redis: r, name: l.Name, quota: l.Quota(), conf: confOf(l.Rate, l.Burst)}
	if len(l.Overrides) > 0 {
		g.overrides = make(map[string]bucketConf, len(l.Overrides))
		for _, o := range l.Overrides {
			g.overrides[o.Value] = confOf(o.Rate, o.Burst)
		}
	}
	if r.conf.OnError == FailLocal {
		g.local = New(share(l, r.conf.Instances))
	}
	return g
}

// share is l for one of n sidecars: its rate's window n times as long,
// its burst divided by n (rounded up); of a quota, N divided by n
// (rounded up), the window the same.
func share(l Limit, n int) Limit {
	part := func(r Rate, burst int) (Rate, int) {
		if l.Quota() {
			return Rate{N: (r.N + int64(n) - 1) / int64(n), Window: r.Window}, 0
		}
		if burst == 0 {
			burst = r.DefaultBurst()
		}
		return Rate{N: r.N, Window: r.Window * time.Duration(n)}, (burst + n - 1) / n
	}
	l.Rate, l.Burst = part(l.Rate, l.Burst)
	ov := make([]Override, len(l.Overrides))
	for i, o := range l.Overrides {
		o.Rate, o.Burst = part(o.Rate, o.Burst)
		ov[i] = o
	}
	l.Overrides = ov
	return l
}

// Allow takes a token from key's bucket in Redis. It waits for Redis at
// most the redis section's timeout (less if ctx ends sooner); on an
// error or a timeout the decision is onError's, with Source
// FromFallback and Err set: failOpen allows (Remaining, RetryAfter and
// Reset 0), failClosed refuses (RetryAfter one emission interval, at
// most a second), local asks this sidecar's share.
//
// Of a quota, Allow counts the request in key's window in Redis if it
// has room (see TypeQuota); the fallbacks are the same (failClosed's
// RetryAfter a second).
func (g *Global) Allow(ctx context.Context, key string) Decision {
	c := g.conf
	if g.overrides != nil {
		if o, ok := g.overrides[key]; ok {
			c = o
		}
	}
	if g.quota {
		return g.count(ctx, key, c)
	}
	interval := 1e6 / float64(c.limit) // µs
	now := ""
	if g.clock != nil {
		now = strconv.FormatInt(g.clock().UnixMicro(), 10)
	}
	ctx, cancel := context.WithTimeout(ctx, g.redis.conf.Timeout.D())
	defer cancel()
	res, err := gcraScript.Run(ctx, g.redis.client,
		[]string{g.redis.conf.KeyPrefix + g.name + ":" + key},
		strconv.FormatFloat(interval, 'g', -1, 64), c.burst, now).Int64Slice()
	if err == nil && len(res) != 4 {
		err = fmt.Errorf("ratelimit: the script returned %d values, not 4", len(res))
	}
	if err != nil {
		return g.fallback(key, c, interval, err)
	}
	return Decision{
		Allowed:    res[0] == 1,
		Limit:      c.rate,
		Burst:      c.burst,
		Remaining:  int(max(0, res[1])),
		RetryAfter: time.Duration(res[2]) * time.Microsecond,
		Reset:      time.Duration(res[3]) * time.Microsecond,
		Source:     FromRedis,
	}
}

// count is Allow of a quota. Its key is the prefix, the limit's name,
// "/quota:" and the key value: never a bucket's key (a name has no '/'),
// so a limit whose type changes finds no value of the other kind.
func (g *Global) count(ctx context.Context, key string, c bucketConf) Decision {
	ctx, cancel := context.WithTimeout(ctx, g.redis.conf.Timeout.D())
	defer cancel()
	res, err := quotaScript.Run(ctx, g.redis.client,
		[]string{g.redis.conf.KeyPrefix + g.name + "/quota:" + key},
		c.rate.N, c.rate.Window.Milliseconds()).Int64Slice()
	if err == nil && len(res) != 3 {
		err = fmt.Errorf("ratelimit: the script returned %d values, not 3", len(res))
	}
	if err != nil {
		return g.fallback(key, c, 1e6, err)
	}
	d := Decision{
		Allowed:   res[0] == 1,
		Limit:     c.rate,
		Remaining: int(max(0, c.rate.N-res[1])),
		Reset:     time.Duration(res[2]) * time.Millisecond,
		Source:    FromRedis,
	}
	if !d.Allowed {
		d.RetryAfter = d.Reset
	}
	return d
}

// fallback is the decision of onError; interval is the emission
// interval (µs), failClosed's wait (at most a second).
func (g *Global) fallback(key string, c bucketConf, interval float64, err error) Decision {
	err = fmt.Errorf("ratelimit: redis %s: %w", g.redis.conf.Address, err)
	burst := c.burst
	if g.quota {
		burst = 0
	}
	var d Decision
	switch g.redis.conf.OnError {
	case FailLocal:
		d = g.local.Allow(key, time.Now())
	case FailClosed:
		wait := time.Duration(math.Ceil(interval)) * time.Microsecond
		d = Decision{Limit: c.rate, Burst: burst, RetryAfter: min(wait, time.Second)}
	default:
		d = Decision{Allowed: true, Limit: c.rate, Burst: burst}
	}
	d.Source, d.Err = FromFallback, err
	return d
}
